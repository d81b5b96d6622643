"""``pcpo sample``: image grids from a base model, a trained run, or an IRG combination of runs.

* ``--model FAMILY``: the base model alone.
* ``--run A``: the trained model of A (γ = 1, exactly).
* ``--run A --guidance-scale 0.5``: IRG between A's base and A (γ < 1 interpolates, γ > 1 extrapolates).
* ``--run A --run B --guidance-scale 0.5 --guidance-scale 1.5``: ``p_ref + 0.5 (p_A − p_ref) + 1.5 (p_B − p_ref)``.
* ``--run A --sweep 0,0.5,1,1.5``: one block of columns per γ, to see the reward dial.

The reference of a fully fine-tuned run is its base model loaded separately; of a LoRA run, the same
adapter with LoRA disabled (``adapter.reference()``). Sampling is deterministic (flow ODE / DDIM η = 0)
from a fixed seed, so grids at different γ share their noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.base import ModelAdapter
from ..run import resolve_prompt_set
from ..trainer.config import load_config
from .irg import IRGAdapter, ReferenceView
from .runs import eval_sampler, generate, load_base, load_trained, resolve_run


def build_irg(run_paths: list[str], scales: list[float], device: str = "cpu") -> tuple[ModelAdapter, object]:
    """(adapter, config of the first run): the trained model (one run, γ = 1) or the IRG combination."""
    refs = [resolve_run(p) for p in run_paths]
    spec0 = refs[0].cfg.model.spec()
    for r in refs[1:]:
        if r.cfg.model.spec() != spec0:
            raise ValueError(f"--run: {r.run_dir} fine-tunes {r.cfg.model.spec()} but {refs[0].run_dir} fine-tunes "
                             f"{spec0}; IRG combines fine-tunes of one base model")
    if not scales:
        scales = [1.0] * len(refs)
    if len(scales) == 1 and len(refs) > 1:
        scales = scales * len(refs)
    if len(scales) != len(refs):
        raise ValueError(f"--guidance-scale: give one per --run ({len(refs)}) or a single one, got {len(scales)}")
    trained = [load_trained(r, device) for r in refs]
    if len(trained) == 1 and scales[0] == 1.0:
        return trained[0], refs[0].cfg
    base = ReferenceView(trained[0]) if trained[0].has_reference() else load_base(refs[0].cfg, device)
    return IRGAdapter(base, list(zip(trained, scales))), refs[0].cfg


def run_sample(args) -> int:
    from ..figures import save_grid

    if bool(args.run) == bool(args.model):
        raise ValueError("give either --run RUN_DIR (repeatable) or --model FAMILY")
    device = args.device
    if args.model:
        if args.guidance_scale or args.sweep:
            raise ValueError("--guidance-scale/--sweep: IRG needs trained runs (--run)")
        cfg = load_config(None, [f"model.family={args.model}"])
        from ..models.loader import load_model

        adapter = load_model({"family": args.model, "device": device}).to(device)
        if adapter.prediction_type != "flow":
            cfg.sampler.name, cfg.sampler.steps, cfg.sampler.eta = "ddim", 50, 1.0
        blocks = [("base", adapter)]
    else:
        if args.sweep:
            if len(args.run) != 1:
                raise ValueError("--sweep: give exactly one --run")
            gammas = [float(x) for x in args.sweep.split(",") if x.strip()]
            blocks = []
            cfg = None
            for g in gammas:
                a, cfg = build_irg(args.run, [g], device)
                blocks.append((f"γ={g:g}", a))
        else:
            a, cfg = build_irg(args.run, [float(g) for g in args.guidance_scale], device)
            blocks = [("irg" if isinstance(a, IRGAdapter) else "trained", a)]
    prompt_set = resolve_prompt_set(args.prompts or cfg.data.eval_prompts, "--prompts")
    prompts = list(prompt_set.prompts)
    n = args.images_per_prompt
    flat = [p for p in prompts for _ in range(n)]
    cfg_scale = cfg.sampler.guidance_scale if args.cfg is None else args.cfg
    seed = cfg.eval.seed if args.seed is None else args.seed
    images: list[torch.Tensor] = []
    labels: list[str] = []
    reward_fn = None
    if args.reward:
        from ..rewards.registry import build_reward, call_reward

        reward_fn = build_reward(args.reward)
    for name, adapter in blocks:
        sampler = eval_sampler(cfg, adapter, args.steps)
        imgs = generate(adapter, sampler, flat, cfg_scale, seed)
        images.append(imgs)
        labels += list(prompts)
        msg = f"{name}: {len(flat)} images"
        if reward_fn is not None:
            msg += f", {args.reward} = {float(call_reward(reward_fn, imgs, flat, prompt_set.metadata_for(flat)).float().mean()):.4f}"
        print(msg, flush=True)
    out = Path(args.out)
    if len(blocks) > 1:  # one row per prompt, the blocks (e.g. IRG scales) side by side, left to right
        per_prompt = [torch.cat([img[i * n:(i + 1) * n] for img in images]) for i in range(len(prompts))]
        save_grid(torch.cat(per_prompt), out, nrow=n * len(blocks), labels=list(prompts),
                  col_labels=[name for name, _ in blocks])
        print(f"columns, left to right: {', '.join(name for name, _ in blocks)} ({n} images each)", flush=True)
    else:
        save_grid(torch.cat(images), out, nrow=n, labels=labels)
    print(f"wrote {out}", flush=True)
    return 0
