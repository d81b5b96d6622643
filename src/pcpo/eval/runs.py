"""Load what a training run produced: its config, the base model, the trained weights, its samplers.

``RUN`` arguments of ``pcpo eval / sample / report`` may be a run directory (``final/`` if the run
finished, else its newest intact checkpoint) or one checkpoint directory
``RUN_DIR/checkpoints/epoch-XXXXXX``. Bad paths fail with one line (``ValueError``) that says what was
expected; a checkpoint is verified against its manifest before use (a damaged one raises
:class:`~pcpo.checkpoint.CheckpointError` naming the file; a run's damaged newest one is skipped with a
warning line on stderr).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import find_resumable, list_checkpoints, verify_checkpoint
from ..errors import ConfigError
from ..models.base import ModelAdapter
from ..run import build_eval_sampler, derived_generator, load_adapter, load_run_config
from ..samplers import Sampler
from ..samplers import generate as generate_images
from ..trainer.config import RunConfig


@dataclass
class RunRef:
    run_dir: Path
    cfg: RunConfig
    weights: Path            # a trainable-state-dict safetensors file
    label: str               # "final" or "epoch-000012"
    epoch: int | None        # epoch of the weights if known


def _read_config(run_dir: Path) -> RunConfig:
    try:
        return load_run_config(run_dir)
    except ConfigError as e:
        if not (run_dir / "config.yaml").is_file():
            raise ValueError(str(e)) from None
        raise ValueError(f"{run_dir / 'config.yaml'}: unreadable run config ({str(e).splitlines()[0]})") from None


def resolve_run(path: str | Path) -> RunRef:
    """A run directory or a checkpoint directory → :class:`RunRef` (config + which weights)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such run directory or checkpoint")
    if (p / "model.safetensors").is_file() and (p / "state.json").is_file():  # a checkpoint directory
        run_dir = p.parent.parent
        cfg = _read_config(run_dir)
        verify_checkpoint(p, required=("model.safetensors",))
        epoch = json.loads((p / "state.json").read_text()).get("epoch")
        return RunRef(run_dir, cfg, p / "model.safetensors", p.name, epoch)
    if (p / "model.safetensors").is_file() and p.name == "final":
        p = p.parent
    cfg = _read_config(p)
    final = p / "final" / "model.safetensors"
    if final.is_file():
        return RunRef(p, cfg, final, "final", cfg.epochs)
    # unfinished run, or final/ in a pipeline format: the newest intact checkpoint holds the same weights
    found, warnings = find_resumable(p)
    for line in warnings:
        print(f"warning: {p}/{line}", file=sys.stderr)
    if found is not None:
        epoch = json.loads((found / "state.json").read_text()).get("epoch")
        return RunRef(p, cfg, found / "model.safetensors", found.name, epoch)
    if list_checkpoints(p):
        raise ValueError(f"{p}: run has no intact checkpoint (see the warnings above) and no final/model.safetensors")
    raise ValueError(f"{p}: run has no trained weights yet (no final/model.safetensors and no checkpoints)")


def load_base(cfg: RunConfig, device: str | torch.device = "cpu") -> ModelAdapter:
    """The run's model as it was before training (LoRA layers, if any, freshly initialised)."""
    return load_adapter(cfg, device)


def load_trained(ref: RunRef, device: str | torch.device = "cpu") -> ModelAdapter:
    """The run's model with the trained weights of ``ref`` loaded."""
    from safetensors.torch import load_file

    adapter = load_base(ref.cfg, device)
    state = load_file(str(ref.weights))
    ema = {k: state.pop(k) for k in [k for k in state if k.startswith("__ema__.")]}
    adapter.load_trainable_state_dict({k: v.to(adapter.device) for k, v in state.items()})
    if ema:  # a checkpoint of a run with train.ema_decay: evaluate the averaged weights, as the trainer does
        from ..trainer.ema import ParameterEMA

        avg = ParameterEMA(adapter.trainable_parameters(), decay=1.0)
        avg.load_state_tensors(ema)
        with torch.no_grad():
            for p, e in zip(avg.params, avg.shadow):
                p.copy_(e)
    adapter.denoiser.eval()
    return adapter


def eval_sampler(cfg: RunConfig, adapter: ModelAdapter, steps: int | None = None) -> Sampler:
    """The deterministic sampler (flow ODE / DDIM η = 0) the trainer evaluates with."""
    return build_eval_sampler(cfg, adapter, steps)


@torch.no_grad()
def generate(adapter: ModelAdapter, sampler: Sampler, prompts: list[str], guidance_scale: float,
             seed: int, batch: int = 64) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for ``prompts`` from the fixed noise of ``seed``.

    The noise is drawn exactly as the trainer's held-out evaluation draws it (same derived generator),
    so the numbers of ``pcpo eval`` at the final epoch match the run's own last ``eval_*`` record.
    """
    gen = derived_generator(seed, "eval", device=adapter.device)
    x = adapter.initial_noise(len(prompts), generator=gen)
    return generate_images(adapter, sampler, prompts, guidance_scale, x, batch=batch)
