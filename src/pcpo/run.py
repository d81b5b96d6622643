"""Run assembly: what a run's config describes, built once for the trainer, ``pcpo eval``, ``pcpo
sample``, the benchmark and scripts alike — prompts, derived random streams, the model, the rollout and
evaluation samplers, the reward, and a run directory's saved config.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import ConfigError
from .samplers import SAMPLERS, Sampler, build_sampler
from .trainer.config import RunConfig, apply_overrides, from_dict, load_yaml, validate


def resolve_prompts(spec, field: str) -> list[str]:
    """The prompt list a ``data.prompts``-style spec names (every form of :func:`pcpo.prompts.load_prompts`:
    lists, ``world:``, ``ddpo:``, text/JSONL/JSON/CSV/TSV files, ``hf:`` datasets, mappings)."""
    from .prompts import load_prompts

    return list(load_prompts(spec, field).prompts)


def resolve_prompt_set(spec, field: str):
    """The :class:`pcpo.prompts.PromptSet` a ``data.prompts``-style spec names: the prompts and their
    per-prompt metadata (``prompt_set.metadata_for(batch_prompts)`` is what metadata-aware rewards get)."""
    from .prompts import load_prompts

    return load_prompts(spec, field)


def derived_generator(seed: int, *parts, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, parts): per epoch/rank/purpose streams, so resume is exact."""
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load_adapter(cfg: RunConfig, device: str | torch.device = "cpu"):
    """The run's model as it is before training (LoRA layers, if any, freshly initialised)."""
    from .models.loader import load_model

    spec = cfg.model.spec()
    spec.setdefault("device", str(device))
    return load_model(spec).to(device)


def build_run_sampler(cfg: RunConfig, adapter) -> Sampler:
    """The rollout sampler a run's config describes for ``adapter`` (flow SDEs or DDIM on its schedule)."""
    s = cfg.sampler
    kind = SAMPLERS.meta(s.name)["kind"]
    model_kind = "flow" if adapter.prediction_type == "flow" else "diffusion"
    if kind != model_kind:
        usable = [n for n in SAMPLERS if SAMPLERS.meta(n)["kind"] == model_kind and SAMPLERS.meta(n)["train"]]
        raise ConfigError(f"sampler.name: {s.name} needs a {kind} model, but model.family {cfg.model.family!r} "
                          f"is a {model_kind} model; use {' or '.join(usable)}")
    if model_kind == "flow":
        sampler = build_sampler(s.name, s.steps, s.eta, shift=s.shift, **flow_grid_options(cfg, adapter))
    else:
        sched = dict(adapter.ddim_schedule())
        sched.setdefault("prediction_type", adapter.prediction_type)
        sched["spacing"] = s.spacing
        sampler = build_sampler(s.name, s.steps, s.eta, **sched)
    sampler.time_input = s.model_time
    return sampler


def flow_grid_options(cfg: RunConfig, adapter) -> dict:
    """Grid options of a flow sampler: ``linspace`` (shifted by ``sampler.shift``) or ``pipeline``, the
    stock scheduler's ``set_timesteps(N)`` from the model's own scheduler config (its shift and, for
    dynamic shifting, the image token count); the toy models use a static-shift config with
    ``sampler.shift``."""
    s = cfg.sampler
    if s.grid != "pipeline":
        return {"grid": "linspace"}
    pipe = getattr(adapter, "pipe", None)
    if pipe is None or not hasattr(pipe.scheduler, "config"):
        return {"grid": "pipeline", "scheduler_config": {"num_train_timesteps": 1000, "shift": s.shift}}
    sched = dict(pipe.scheduler.config)
    seq = adapter.image_seq_len() if hasattr(adapter, "image_seq_len") else None
    return {"grid": "pipeline", "scheduler_config": sched, "image_seq_len": seq}


def build_eval_sampler(cfg: RunConfig, adapter, steps: int | None = None) -> Sampler:
    """The deterministic sampler (flow ODE / DDIM η = 0) a run evaluates with."""
    base = build_run_sampler(cfg, adapter)
    return base.deterministic(steps or cfg.sampler.eval_steps).inherit(base)


def build_run_reward(cfg: RunConfig):
    """The reward a run's config describes: one registered reward or a weighted sum."""
    from .rewards.registry import WeightedSum, build_reward

    r = cfg.reward
    if r.weights:
        return WeightedSum({name: (float(w), build_reward(name, **r.options.get(name, {})))
                            for name, w in r.weights.items()})
    return build_reward(r.name, **r.options)


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The validated config saved in a run directory (``--set`` ``overrides`` applied)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir}: not a pcpo run directory (no config.yaml); give RUN_DIR or "
                          "RUN_DIR/checkpoints/epoch-XXXXXX")
    data = load_yaml(cfg_path.read_text(), str(cfg_path))
    cfg = from_dict(RunConfig, apply_overrides(data or {}, overrides or []))
    validate(cfg)
    return cfg
