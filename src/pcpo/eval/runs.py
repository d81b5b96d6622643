"""Load what a training run produced: its config, the base model, the trained weights, its samplers.

``RUN`` arguments of ``pcpo eval / sample / report`` may be a run directory (``final/`` if the run
finished, else its newest checkpoint) or one checkpoint directory ``RUN_DIR/checkpoints/epoch-XXXXXX``.
Bad paths fail with one line (``ValueError``) that says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..models.base import ModelAdapter
from ..samplers import Sampler
from ..trainer.checkpoint import list_checkpoints
from ..trainer.config import RunConfig, from_dict, validate
from ..trainer.trainer import build_run_sampler, make_eval_sampler


@dataclass
class RunRef:
    run_dir: Path
    cfg: RunConfig
    weights: Path            # a trainable-state-dict safetensors file
    label: str               # "final" or "epoch-000012"
    epoch: int | None        # epoch of the weights if known


def _read_config(run_dir: Path) -> RunConfig:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir}: not a pcpo run directory (no config.yaml); give RUN_DIR or "
                         "RUN_DIR/checkpoints/epoch-XXXXXX")
    try:
        data = yaml.safe_load(cfg_path.read_text())
        cfg = from_dict(RunConfig, data)
        validate(cfg)
    except Exception as e:  # noqa: BLE001  (a damaged config: still one line)
        raise ValueError(f"{cfg_path}: unreadable run config ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return cfg


def resolve_run(path: str | Path) -> RunRef:
    """A run directory or a checkpoint directory → :class:`RunRef` (config + which weights)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such run directory or checkpoint")
    if (p / "model.safetensors").is_file() and (p / "state.json").is_file():  # a checkpoint directory
        run_dir = p.parent.parent
        cfg = _read_config(run_dir)
        import json

        epoch = json.loads((p / "state.json").read_text()).get("epoch")
        return RunRef(run_dir, cfg, p / "model.safetensors", p.name, epoch)
    if (p / "model.safetensors").is_file() and p.name == "final":
        p = p.parent
    cfg = _read_config(p)
    final = p / "final" / "model.safetensors"
    if final.is_file():
        return RunRef(p, cfg, final, "final", cfg.epochs)
    ckpts = list_checkpoints(p)
    if ckpts:  # unfinished run, or final/ in a pipeline format: the newest checkpoint holds the same weights
        import json

        epoch = json.loads((ckpts[-1] / "state.json").read_text()).get("epoch")
        return RunRef(p, cfg, ckpts[-1] / "model.safetensors", ckpts[-1].name, epoch)
    raise ValueError(f"{p}: run has no trained weights yet (no final/model.safetensors and no checkpoints)")


def load_base(cfg: RunConfig, device: str | torch.device = "cpu") -> ModelAdapter:
    """The run's model as it was before training (LoRA layers, if any, freshly initialised)."""
    from ..models.loader import load_model

    spec = cfg.model.spec()
    spec["device"] = str(device)
    return load_model(spec).to(device)


def load_trained(ref: RunRef, device: str | torch.device = "cpu") -> ModelAdapter:
    """The run's model with the trained weights of ``ref`` loaded."""
    from safetensors.torch import load_file

    adapter = load_base(ref.cfg, device)
    state = load_file(str(ref.weights))
    adapter.load_trainable_state_dict({k: v.to(adapter.device) for k, v in state.items()})
    adapter.denoiser.eval()
    return adapter


def eval_sampler(cfg: RunConfig, adapter: ModelAdapter, steps: int | None = None) -> Sampler:
    """The deterministic sampler (flow ODE / DDIM η = 0) the trainer evaluates with."""
    return make_eval_sampler(build_run_sampler(cfg, adapter), steps or cfg.sampler.eval_steps)


@torch.no_grad()
def generate(adapter: ModelAdapter, sampler: Sampler, prompts: list[str], guidance_scale: float,
             seed: int, batch: int = 64) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for ``prompts`` from the fixed noise of ``seed``.

    The noise is drawn exactly as the trainer's held-out evaluation draws it (same derived generator),
    so the numbers of ``pcpo eval`` at the final epoch match the run's own last ``eval_*`` record.
    """
    from ..samplers import sample
    from ..trainer.trainer import derived_generator

    gen = derived_generator(seed, "eval", device=adapter.device)
    x = adapter.initial_noise(len(prompts), generator=gen)
    finals = []
    for s0 in range(0, len(prompts), batch):
        finals.append(sample(adapter, sampler, prompts[s0:s0 + batch], guidance_scale, x=x[s0:s0 + batch].float()))
    return adapter.decode(torch.cat(finals).float()).float()
