"""``pcpo eval``: held-out evaluation of a trained run against its base model.

Both models sample the same prompts from the same fixed noise with the deterministic sampler (flow ODE /
DDIM η = 0, the trainer's evaluation sampler), so every difference is the fine-tuning's. Reported per
model: the run's reward (and its components), and on the embedded world the gold metrics of
:mod:`pcpo.world.metrics` (prompt accuracy, Fréchet distance to the real reference set, per-prompt
diversity) plus the Fréchet distance of the trained samples to the base model's own samples (how far RL
moved the distribution).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..rewards.registry import call_reward
from ..run import build_run_reward, resolve_prompt_set
from .runs import RunRef, eval_sampler, generate, load_base, load_trained, resolve_run


def reward_stats(reward_fn, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> dict:
    r = call_reward(reward_fn, images, prompts, metadata).float().cpu()
    out = {"reward_mean": float(r.mean()), "reward_std": float(r.std(unbiased=False))}
    comps = getattr(reward_fn, "components", None)
    if comps is not None:
        for name, v in call_reward(comps, images, prompts, metadata).items():
            out[f"reward_{name}"] = float(v.float().mean())
    return out, r


# ---------------------------------------------------------------------------- gold metrics

def _is_world(prompts: list[str]) -> bool:
    try:
        from ..world import data

        return all(p.strip().lower() in data.PROMPT_TO_ID for p in prompts)
    except ImportError:
        return False


def gold_metrics(images: torch.Tensor, prompts: list[str], base_images: torch.Tensor | None = None,
                 device: str | torch.device = "cpu") -> dict:
    """:class:`pcpo.world.metrics.GoldMetrics` (accuracy, ``fd_real``, ``diversity``, ``fd_base``), or ``{}``
    if the world's metrics are unavailable."""
    try:
        from ..world.metrics import GoldMetrics
    except ImportError:
        return {}
    return {k: float(v) for k, v in GoldMetrics(device=device)(images, prompts, base_images=base_images).items()}


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_run(run: str | Path | RunRef, prompts_spec=None, images_per_prompt: int | None = None,
                 seed: int | None = None, device: str = "cpu", steps: int | None = None,
                 with_base: bool = True, gold: bool = True) -> dict:
    """Evaluate the trained model of ``run`` (and its base model) on held-out prompts; returns a dict."""
    ref = run if isinstance(run, RunRef) else resolve_run(run)
    cfg = ref.cfg
    prompt_set = resolve_prompt_set(prompts_spec if prompts_spec is not None else cfg.data.eval_prompts, "--prompts")
    prompts = list(prompt_set.prompts)
    n = images_per_prompt or cfg.eval.images_per_prompt
    seed = cfg.eval.seed if seed is None else seed
    flat = [p for p in prompts for _ in range(n)]
    reward_fn = build_run_reward(cfg)
    trained = load_trained(ref, device)
    sampler = eval_sampler(cfg, trained, steps)
    gs = cfg.sampler.guidance_scale
    bs = cfg.sampler.rollout_batch
    result: dict = {
        "run": str(ref.run_dir), "weights": ref.label, "epoch": ref.epoch, "prompts": prompts,
        "images_per_prompt": n, "seed": seed, "guidance_scale": gs, "sampler": sampler.describe(),
        "reward": cfg.reward.name if not cfg.reward.weights else dict(cfg.reward.weights),
    }
    models = {}
    if with_base:  # first, so the trained samples can be compared with the base model's
        models["base"] = load_base(cfg, device)
    models["trained"] = trained
    images = {}
    per_prompt: dict[str, dict] = {p: {} for p in prompts}
    world = gold and _is_world(prompts)
    for name, adapter in models.items():
        adapter.denoiser.eval()
        imgs = generate(adapter, sampler, flat, gs, seed, batch=bs)
        images[name] = imgs
        stats, r = reward_stats(reward_fn, imgs, flat, prompt_set.metadata_for(flat))
        if world:
            base_imgs = images.get("base") if name == "trained" else None
            stats.update({f"gold_{k}": v for k, v in gold_metrics(imgs, flat, base_imgs, device).items()})
        result[name] = stats
        for i, p in enumerate(prompts):
            per_prompt[p][name] = float(r[i * n:(i + 1) * n].mean())
    result["per_prompt"] = per_prompt
    result["_images"] = images  # dropped before JSON; lets callers save grids
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..figures import DIRECTION_LEGEND, metric_label

    models = [m for m in ("base", "trained") if m in result]
    keys = sorted({k for m in models for k, v in result[m].items() if isinstance(v, (int, float))},
                  key=lambda k: (not k.startswith("reward"), k))
    t = Table(title=f"{result['run']} ({result['weights']}): {len(result['prompts'])} prompts × "
              f"{result['images_per_prompt']} images, seed {result['seed']}")
    t.add_column("metric")
    for m in models:
        t.add_column(m, justify="right")
    if len(models) == 2:
        t.add_column("Δ", justify="right")
    for k in keys:
        vals = [result[m].get(k) for m in models]
        row = [metric_label(k)] + [("–" if v is None else f"{v:.4f}") for v in vals]
        if len(models) == 2:
            a, b = vals
            row.append(f"{b - a:+.4f}" if isinstance(a, float) and isinstance(b, float) and math.isfinite(a)
                       and math.isfinite(b) else "–")
        t.add_row(*row)
    t.caption = DIRECTION_LEGEND
    Console(width=110).print(t)
