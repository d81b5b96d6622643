"""Typed run configuration: dataclasses with help text, loaded from YAML, overridden with ``--set``.

A config is validated completely before any work starts: unknown keys, wrong types and out-of-range
values fail with one line that names the key (``train.lr: must be > 0, got -1.0``).

Shipped configs live in ``pcpo/configs/*.yaml`` and can be named without the path
(``pcpo train flowgrpo-pcpo``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


def _f(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING, **kw):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    family: str = _f("toy-flow", "model family: toy-flow, toy-ddpm (embedded world), sd, sdxl, sd3, flux")
    path: str | None = _f(None, "hub id or local directory of a diffusers pipeline (real families); "
                          "for toy models a directory of pretrained weights (default: shipped)")
    dtype: str | None = _f(None, "weights dtype: float32, bfloat16, float16 (null = family default)")
    lora: dict | None = _f(None, "LoRA on the denoiser, e.g. {rank: 32, alpha: 64, targets: [to_q, to_k]}; "
                           "null = full fine-tuning")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    detach_uncond: bool = _f(False, "detach the unconditional CFG branch in training (Flow-GRPO does)")
    options: dict = _f(help="family-specific options passed to the model loader (resolution, variant, ...)",
                       factory=dict)

    def spec(self) -> dict:
        """The loader's spec: family plus every field set away from its default, plus ``options``."""
        defaults = ModelConfig.__new__(ModelConfig)
        defaults.__init__()
        spec = {k: v for k, v in dataclasses.asdict(self).items()
                if k != "options" and (k == "family" or v != getattr(defaults, k))}
        spec.update(self.options)
        return spec


@dataclass
class SamplerConfig:
    name: str = _f("flow-sde", "ddim (DDPO), dance-sde (DanceGRPO, g = eta), flow-sde (Flow-GRPO, g = eta*sqrt(t/(1-t)))")
    steps: int = _f(10, "sampling steps per trajectory")
    eta: float = _f(0.7, "noise level: DDIM eta, DanceGRPO eta or Flow-GRPO a")
    shift: float = _f(1.0, "timestep shift s of flow samplers (3 for SD3.5/FLUX)")
    spacing: str = _f("leading", "DDIM timestep spacing: leading, trailing, linspace")
    guidance_scale: float = _f(4.5, "classifier-free guidance scale, the same in rollout and training")
    shared_noise: bool = _f(False, "share the initial noise within each group (DanceGRPO's init_same_noise)")
    rollout_batch: int = _f(64, "samples per rollout forward pass")
    eval_steps: int | None = _f(None, "steps of the deterministic evaluation sampler (null = steps)")


@dataclass
class RewardConfig:
    name: str = _f("alignment", "registered reward name (see pcpo.rewards), ignored when weights is set")
    options: dict = _f(help="keyword options of the reward factory", factory=dict)
    weights: dict = _f(help="weighted sum of registered rewards, e.g. {color_match: 1.0, alignment: 0.05}",
                       factory=dict)


@dataclass
class DataConfig:
    prompts: Any = _f("world:train", "training prompts: world:train, world:all, world:heldout, a file with one "
                      "prompt per line, or a list")
    eval_prompts: Any = _f("world:heldout", "held-out evaluation prompts (same forms as prompts)")
    prompts_per_epoch: int = _f(4, "distinct prompts sampled per epoch")
    group_size: int = _f(8, "images per prompt (the group of GRPO / the tracker's batch)")


@dataclass
class TrainConfig:
    objective: str = _f("pcpo", "clipped (DDPO/DanceGRPO/Flow-GRPO), log_hinge (PCPO-base), pcpo")
    credit: str | None = _f(None, "timestep credit: native, pcpo, uniform (null = the objective's default)")
    w_star: float | None = _f(None, "PCPO mean step weight override w* (null = credit preserving)")
    linear_only: bool = _f(False, "PCPO surrogate with the linear term only")
    clip_range: float = _f(1e-4, "clip range xi of the ratio / hinge")
    adv_clip: float = _f(5.0, "advantages are clipped to +-adv_clip")
    advantage: str = _f("group", "group, per_prompt_tracker (DDPO), prompt_mean_global_std (Flow-GRPO)")
    tracker_buffer: int = _f(32, "per_prompt_tracker: rewards kept per prompt")
    tracker_min_count: int = _f(16, "per_prompt_tracker: below this many, batch statistics are used")
    timestep_selection: str = _f("first_fraction", "all_shuffled (DDPO), drop_last_random (DanceGRPO), "
                                 "first_fraction (Flow-GRPO)")
    timestep_fraction: float = _f(1.0, "fraction of the (eligible) steps trained per trajectory")
    inner_epochs: int = _f(1, "passes over each epoch's rollouts")
    minibatch_size: int = _f(0, "trajectories per optimizer step (0 = all of the epoch's); gradients of "
                             "all their trained timesteps are accumulated")
    micro_batch: int = _f(64, "(sample, timestep) pairs per forward pass in the update")
    lr: float = _f(1e-4, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_betas: tuple = _f((0.9, 0.999), "AdamW betas")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient-norm clipping (0 = off)")
    kl_beta: float = _f(0.0, "weight of the per-step KL to the reference model (0 = off)")
    kl_form: str = _f("pcpo", "pcpo: 1/2 w~^2 |p - p_ref|^2; flow-grpo: |mu - mu_ref|^2/(2 g^2)")
    mixed_precision: str = _f("no", "no, bf16, fp16: autocast of model forwards (log-ratios stay fp32)")
    max_nonfinite: int = _f(3, "stop after this many consecutive updates skipped for a NaN/inf loss or reward")


@dataclass
class EvalConfig:
    every: int = _f(5, "evaluate every N epochs (and at the start and end); 0 = only start and end")
    images_per_prompt: int = _f(4, "held-out images per prompt")
    seed: int = _f(2024, "seed of the evaluation noise (fixed across evaluations)")
    grid: bool = _f(True, "save an image grid of held-out prompts at each evaluation")
    gold: bool = _f(True, "compute gold metrics (embedded world only): accuracy, Frechet distance, diversity")


@dataclass
class LogConfig:
    tensorboard: bool = _f(True, "write TensorBoard events to RUN_DIR/tb")
    wandb: bool = _f(False, "also log to Weights & Biases (must be installed)")
    wandb_project: str = _f("pcpo", "wandb project")
    progress: bool = _f(True, "progress bars")
    per_sample: bool = _f(False, "log every sample's reward and advantage (as every rank used them) in metrics.jsonl")


@dataclass
class CheckpointConfig:
    every: int = _f(5, "save a checkpoint every N epochs (and at the end)")
    keep_last: int = _f(2, "checkpoints to keep")


@dataclass
class RunConfig:
    seed: int = _f(0, "seed of everything (rollout noise, timestep selection, prompts)")
    epochs: int = _f(30, "training epochs (one rollout + update each)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, ...")
    distributed: str = _f("ddp", "multi-process mode under torchrun: ddp (all-reduce gradients) or fsdp")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    model: ModelConfig = _f(factory=ModelConfig, help="the model")
    sampler: SamplerConfig = _f(factory=SamplerConfig, help="the rollout sampler")
    reward: RewardConfig = _f(factory=RewardConfig, help="the reward")
    data: DataConfig = _f(factory=DataConfig, help="prompts and groups")
    train: TrainConfig = _f(factory=TrainConfig, help="objective and optimisation")
    eval: EvalConfig = _f(factory=EvalConfig, help="held-out evaluation")
    log: LogConfig = _f(factory=LogConfig, help="logging")
    checkpoint: CheckpointConfig = _f(factory=CheckpointConfig, help="checkpoints")


# ---------------------------------------------------------------------------- loading & overrides

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check/convert ``value`` against a simple type hint; ConfigError names ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    if hint in (dict,) or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    if hint in (tuple,) or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"{key}: must be a list, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from nested ``data``; unknown keys and bad types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = from_dict(hint, data[f.name] or {}, key + ".")
        else:
            kwargs[f.name] = _coerce(key, data[f.name], hint)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-4" as a string; accept float-like strings as numbers.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            child = dict(child)
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def resolve_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r}: no such file or shipped config; shipped: {shipped}")


def _read_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("base", None)
    if base is not None:  # single inheritance: `base: other.yaml` (relative to this file or shipped name)
        base_path = path.parent / base if (path.parent / base).is_file() else resolve_config_path(base)
        data = _deep_merge(_read_yaml(base_path), data)
    return data


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Config from a YAML file (or the shipped default) plus ``--set`` overrides, validated."""
    data = _read_yaml(resolve_config_path(path or "default"))
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: RunConfig) -> None:
    """Range and choice checks; every message names the key."""
    from ..advantages import ADVANTAGES
    from ..credit import available_credit
    from ..objectives import KL_FORMS, OBJECTIVES
    from ..samplers import SAMPLER_NAMES

    s, t, d = cfg.sampler, cfg.train, cfg.data
    _check(cfg.epochs > 0, f"epochs: must be > 0, got {cfg.epochs}")
    _check(cfg.distributed in ("ddp", "fsdp"), f"distributed: must be ddp or fsdp, got {cfg.distributed!r}")
    _check(cfg.threads >= 0, f"threads: must be >= 0, got {cfg.threads}")
    _check(s.name in SAMPLER_NAMES and s.name != "ode",
           f"sampler.name: must be ddim, dance-sde or flow-sde, got {s.name!r}")
    _check(s.steps > 0, f"sampler.steps: must be > 0, got {s.steps}")
    _check(s.eta > 0, f"sampler.eta: must be > 0 for training (eta = 0 has no log-density), got {s.eta}")
    _check(s.shift > 0, f"sampler.shift: must be > 0, got {s.shift}")
    _check(s.spacing in ("leading", "trailing", "linspace"),
           f"sampler.spacing: must be leading, trailing or linspace, got {s.spacing!r}")
    _check(s.guidance_scale >= 0, f"sampler.guidance_scale: must be >= 0, got {s.guidance_scale}")
    _check(s.rollout_batch > 0, f"sampler.rollout_batch: must be > 0, got {s.rollout_batch}")
    _check(s.eval_steps is None or s.eval_steps > 0, f"sampler.eval_steps: must be > 0, got {s.eval_steps}")
    _check(d.prompts_per_epoch > 0, f"data.prompts_per_epoch: must be > 0, got {d.prompts_per_epoch}")
    _check(d.group_size > 1, f"data.group_size: must be > 1 (advantages need a group), got {d.group_size}")
    _check(t.objective in OBJECTIVES, f"train.objective: must be one of {sorted(OBJECTIVES)}, got {t.objective!r}")
    _check(t.credit is None or t.credit in available_credit(),
           f"train.credit: must be one of {available_credit()} or null, got {t.credit!r}")
    _check(t.w_star is None or t.w_star > 0, f"train.w_star: must be > 0 or null, got {t.w_star}")
    _check(t.clip_range > 0, f"train.clip_range: must be > 0, got {t.clip_range}")
    _check(t.adv_clip > 0, f"train.adv_clip: must be > 0, got {t.adv_clip}")
    _check(t.advantage in ADVANTAGES, f"train.advantage: must be one of {sorted(ADVANTAGES)}, got {t.advantage!r}")
    _check(t.tracker_buffer > 0 and t.tracker_min_count > 0,
           "train.tracker_buffer / train.tracker_min_count: must be > 0")
    _check(t.timestep_selection in ("all_shuffled", "drop_last_random", "first_fraction"),
           f"train.timestep_selection: must be all_shuffled, drop_last_random or first_fraction, got {t.timestep_selection!r}")
    _check(0 < t.timestep_fraction <= 1, f"train.timestep_fraction: must be in (0, 1], got {t.timestep_fraction}")
    _check(t.inner_epochs > 0, f"train.inner_epochs: must be > 0, got {t.inner_epochs}")
    _check(t.minibatch_size >= 0, f"train.minibatch_size: must be >= 0, got {t.minibatch_size}")
    _check(t.micro_batch > 0, f"train.micro_batch: must be > 0, got {t.micro_batch}")
    _check(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    _check(t.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
           f"train.adam_betas: must be two numbers in [0, 1), got {list(t.adam_betas)}")
    _check(t.max_grad_norm >= 0, f"train.max_grad_norm: must be >= 0, got {t.max_grad_norm}")
    _check(t.kl_beta >= 0, f"train.kl_beta: must be >= 0, got {t.kl_beta}")
    _check(t.kl_form in KL_FORMS, f"train.kl_form: must be one of {list(KL_FORMS)}, got {t.kl_form!r}")
    _check(t.mixed_precision in ("no", "bf16", "fp16"),
           f"train.mixed_precision: must be no, bf16 or fp16, got {t.mixed_precision!r}")
    _check(t.max_nonfinite > 0, f"train.max_nonfinite: must be > 0, got {t.max_nonfinite}")
    _check(cfg.eval.every >= 0, f"eval.every: must be >= 0, got {cfg.eval.every}")
    _check(cfg.eval.images_per_prompt > 0, f"eval.images_per_prompt: must be > 0, got {cfg.eval.images_per_prompt}")
    _check(cfg.checkpoint.every > 0, f"checkpoint.every: must be > 0, got {cfg.checkpoint.every}")
    _check(cfg.checkpoint.keep_last > 0, f"checkpoint.keep_last: must be > 0, got {cfg.checkpoint.keep_last}")
    _check(bool(cfg.reward.name) or bool(cfg.reward.weights), "reward.name: give a reward name or reward.weights")
    for k, w in cfg.reward.weights.items():
        _check(isinstance(w, (int, float)) and not isinstance(w, bool),
               f"reward.weights.{k}: must be a number, got {w!r}")
    _check(bool(cfg.model.family), "model.family: must be set, e.g. toy-flow")
