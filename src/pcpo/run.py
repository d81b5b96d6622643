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


def resolve_device(name: str, field: str = "device") -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given, checked to exist on this machine
    (a one-line ConfigError naming ``field`` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{field}: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{field}: {name} requested but {why}; set {field}=cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{field}: {name} requested but only {torch.cuda.device_count()} CUDA device(s) "
                              f"are visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{field}: mps requested but not available here; set {field}=cpu (or auto)")
    return dev


# ---------------------------------------------------------------------------- preflight

def check_run_dir(run_dir: str | Path, field: str = "--out") -> None:
    """A new run may go to ``run_dir``: it does not exist, or is an empty directory (one line otherwise)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{field}: {run_dir} is a file, not a directory; choose a new directory for the run")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"{field}: run directory {run_dir} exists and is not empty; resume it with "
                          f"`pcpo train --resume {run_dir}` or choose another {field}")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{field}: {parent} is a file, so {run_dir} cannot be created; choose another "
                                  f"{field}")
            break


def check_loggers(cfg: RunConfig) -> None:
    """The configured loggers are installed (TensorBoard, Weights & Biases)."""
    import importlib.util

    if cfg.log.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard: tensorboard is not installed; `pip install tensorboard` or set "
                          "log.tensorboard=false")
    if cfg.log.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("log.wandb: wandb is not installed; `pip install wandb` (or pcpo[wandb]) or set "
                          "log.wandb=false")


def check_reward(reward_fn) -> None:
    """Run the reward's own health check if it has one (a remote reward asks its server once)."""
    check = getattr(reward_fn, "check", None)
    if callable(check):
        check()


def preflight(cfg: RunConfig, run_dir: str | Path | None = None) -> None:
    """Every check of a new run that needs neither the model nor the reward: the run directory, the device
    and the loggers (:class:`pcpo.trainer.Trainer` also builds the model and the reward, and runs the
    reward's health check, before it creates the run directory)."""
    if run_dir is not None:
        check_run_dir(run_dir)
    resolve_device(cfg.device)
    check_loggers(cfg)


def run_started(run_dir: str | Path) -> bool:
    """Whether a run directory holds any result of a trained epoch (a metrics record of epoch >= 1 or a
    checkpoint); a run that failed before that has nothing worth keeping."""
    import json

    run_dir = Path(run_dir)
    ck = run_dir / "checkpoints"
    if ck.is_dir() and any(ck.iterdir()):
        return True
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                if int(json.loads(line).get("epoch", 0)) >= 1:
                    return True
            except (ValueError, TypeError, AttributeError):
                return True  # a record this check cannot read: keep the directory
    return False


def discard_unstarted_run(run_dir: str | Path, created: str | Path | None, emptied: bool = False) -> bool:
    """After a run failed before its first epoch: remove what it created (the directory ``created``, the
    topmost one the run made, or the contents of a directory that was empty before, ``emptied``), so the
    next attempt can use the same ``--out``. Returns whether anything was removed."""
    import shutil

    run_dir = Path(run_dir)
    if (created is None and not emptied) or not run_dir.is_dir() or run_started(run_dir):
        return False
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    else:
        for child in list(run_dir.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    return True


def load_adapter(cfg: RunConfig, device: str | torch.device = "cpu"):
    """The run's model as it is before training (LoRA layers, if any, freshly initialised)."""
    from .models.loader import load_model

    check_model_config(cfg)
    spec = cfg.model.spec()
    spec.setdefault("device", str(device))
    return load_model(spec).to(device)


#: the ``model`` fields of a run config (everything else goes in ``model.options``)
_MODEL_FIELDS = ("family", "path", "dtype", "lora", "gradient_checkpointing", "detach_uncond")
#: loader keys of the toy families (:meth:`pcpo.models.toy.ToyAdapter.from_spec`)
_TOY_KEYS = frozenset({"family", "path", "device", "train", "lora"})


def model_loader_keys(family: str) -> set[str] | None:
    """The spec keys the loader of ``family`` accepts (None: a registered family that does not say)."""
    from .models.loader import FAMILY_ALIASES, MODEL_FAMILIES, _resolve

    family = FAMILY_ALIASES.get(family, family)
    if family in ("toy-flow", "toy-ddpm"):
        return set(_TOY_KEYS)
    factory = MODEL_FAMILIES.get(family)
    if factory is None:
        return None
    cls = getattr(_resolve(factory), "__self__", None)
    keys = getattr(cls, "SPEC_KEYS", None)
    if keys is None:
        return None
    extra = cls.extra_spec_keys() if hasattr(cls, "extra_spec_keys") else set()
    return set(keys) | set(extra)


def model_option_keys(family: str) -> list[str] | None:
    """The keys ``model.options`` may hold for ``family`` (what its loader accepts beyond the model fields)."""
    keys = model_loader_keys(family)
    return None if keys is None else sorted(keys - set(_MODEL_FIELDS) - {"device"})


def check_model_config(cfg: RunConfig) -> None:
    """``model`` before anything is loaded: the family, ``model.options`` keys and fields the family's loader
    accepts, and a local ``model.path`` that exists. One line naming the key."""
    from .models.loader import FAMILY_ALIASES, MODEL_FAMILIES

    m = cfg.model
    family = FAMILY_ALIASES.get(m.family, m.family)
    if family not in MODEL_FAMILIES:
        raise ConfigError(f"model.family: unknown family {m.family!r}; choose one of {', '.join(sorted(MODEL_FAMILIES))}")
    keys = model_loader_keys(family)
    if keys is not None:
        allowed = model_option_keys(family)
        for k in m.options:
            if k in _MODEL_FIELDS:
                raise ConfigError(f"model.options.{k}: {k} is a field of model itself; set model.{k} instead")
            if k not in keys or k == "device":
                raise ConfigError(f"model.options.{k}: unknown option for family {m.family!r}; allowed: "
                                  f"{', '.join(allowed) if allowed else 'none'}")
        for k, v in m.spec().items():
            if k in _MODEL_FIELDS and k not in keys:
                raise ConfigError(f"model.{k}: not used by family {m.family!r} (got {v!r}); remove it")
    if m.path:
        p = Path(m.path).expanduser()
        looks_local = p.is_absolute() or m.path.startswith(("./", "../", "~")) or p.exists()
        if looks_local and not p.is_dir():
            what = "is a file, not a model directory" if p.exists() else "does not exist"
            raise ConfigError(f"model.path: {m.path} {what}; give the model's directory"
                              + (" (or omit model.path for the shipped toy weights)" if family.startswith("toy")
                                 else " or a downloaded hub id"))


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
    from .rewards.registry import WeightedSum, available_rewards, build_reward

    r = cfg.reward
    if r.weights:
        terms = {}
        for name, w in r.weights.items():
            if name not in available_rewards():
                raise ConfigError(f"reward.weights.{name}: unknown reward {name!r}; choose one of "
                                  f"{', '.join(available_rewards())}")
            opts = r.options.get(name, {})
            if not isinstance(opts, dict):
                raise ConfigError(f"reward.options.{name}: with reward.weights, reward.options maps each reward "
                                  f"to its options, e.g. reward.options.{name}: {{KEY: VALUE}}; got {opts!r}")
            try:
                terms[name] = (float(w), _build_one_reward(build_reward, name, opts))
            except ConfigError as e:  # name the term: reward.options.NAME.KEY
                raise ConfigError(str(e).replace("reward.options", f"reward.options.{name}", 1)) from None
        return WeightedSum(terms)
    return _build_one_reward(build_reward, r.name, r.options)


def _build_one_reward(build_reward, name: str, options: dict):
    """``build_reward`` with a reward's load failure (missing package or weights) as one ConfigError line."""
    try:
        return build_reward(name, **options)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - only the rewards' own load errors are turned into one line
        if type(e).__name__ != "RewardLoadError":
            raise
        raise ConfigError(" ".join(str(e).split()) or f"reward {name}: cannot load") from None


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
