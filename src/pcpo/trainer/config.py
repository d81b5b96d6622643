"""Typed run configuration: dataclasses with help text, loaded from YAML, overridden with ``--set``.

A config is validated completely before any work starts: unknown keys, wrong types and out-of-range
values fail with one line that names the key (``train.lr: must be > 0, got -1.0``).

Shipped configs live in ``pcpo/configs/*.yaml`` and can be named without the path
(``pcpo train flowgrpo-pcpo``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..fields import _check, _coerce, _fmt, _hints, check_fields, from_dict  # noqa: F401  (the config API)
from ..fields import spec_field as _f

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

__all__ = ["CONFIG_DIR", "ConfigError", "RunConfig", "load_config", "from_dict", "to_dict", "validate"]


def _registry(module: str, name: str, train_only: bool = False):
    """Choices read from a registry when validating (import kept lazy)."""

    def names() -> tuple[str, ...]:
        import importlib

        reg = getattr(importlib.import_module(module), name)
        return tuple(n for n in reg if not train_only or reg.meta(n).get("train", True))

    return names


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
    options: dict = _f(help="family-specific loader options; sd, sdxl, sd3, flux: resolution, variant, revision, "
                       "autocast, negative_prompt, upcast_trainable, decode_batch_size, pipeline_kwargs, train "
                       "(lora|full), and for sd3/flux max_sequence_length; toy-flow, toy-ddpm: train", factory=dict)

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
    name: str = _f("flow-sde", "ddim (DDPO), dance-sde (DanceGRPO, g = eta), flow-sde (Flow-GRPO, g = eta*sqrt(t/(1-t))), "
                   "cps (Flow-GRPO's coefficients-preserving sampler, eta in [0, 1])",
                   choices=_registry("pcpo.samplers", "SAMPLERS", train_only=True))
    steps: int = _f(10, "sampling steps per trajectory", gt=0)
    eta: float = _f(0.7, "noise level: DDIM eta, DanceGRPO eta or Flow-GRPO a (> 0: eta = 0 has no log-density)",
                    gt=0)
    shift: float = _f(1.0, "timestep shift s of flow samplers (3 for SD3.5/FLUX)", gt=0)
    spacing: str = _f("leading", "DDIM timestep spacing", choices=("leading", "trailing", "linspace"))
    guidance_scale: float = _f(4.5, "classifier-free guidance scale, the same in rollout and training", ge=0)
    shared_noise: bool = _f(False, "share the initial noise within each group (DanceGRPO's init_same_noise)")
    rollout_batch: int = _f(64, "samples per rollout forward pass", gt=0)
    eval_steps: int | None = _f(None, "steps of the deterministic evaluation sampler (null = steps)", gt=0)
    grid: str = _f("linspace", "time grid of flow samplers: linspace (shifted linspace(1, 0, N+1): DanceGRPO, the "
                   "paper's zeta) or pipeline (the stock diffusers scheduler's set_timesteps(N): Flow-GRPO)",
                   choices=("linspace", "pipeline"))
    solver: str = _f("euler", "flow solver after the SDE window: euler, or dpmsolver++ (MixGRPO-Flash: "
                     "DPM-Solver++(2M) on a compressed grid; needs train.sde_window)",
                     choices=("euler", "dpmsolver++"))
    compress_ratio: float = _f(0.4, "dpmsolver++ only: steps after the window = max(1, (N - L) * ratio)", gt=0, le=1)
    model_time: str = _f("exact", "time the denoiser is given: exact, or floor1000 (floor(1000 t) / 1000: "
                         "DanceGRPO's FLUX script)", choices=("exact", "floor1000"))


@dataclass
class RewardConfig:
    name: str = _f("alignment", "registered reward name (see pcpo.rewards), ignored when weights is set")
    options: dict = _f(help="keyword options of the reward factory", factory=dict)
    weights: dict = _f(help="weighted sum of registered rewards, e.g. {color_match: 1.0, alignment: 0.05}",
                       factory=dict)


@dataclass
class DataConfig:
    prompts: Any = _f("world:train", "training prompts: a list, world:train|all|heldout, ddpo:NAME (DDPO's prompt "
                      "functions), a .txt/.jsonl/.json/.csv/.tsv file (PATH#FIELD picks the field or column), "
                      "hf:NAME#COLUMN@SPLIT (a local or cached datasets dataset), or {path, field, split, format, limit}")
    eval_prompts: Any = _f("world:heldout", "held-out evaluation prompts (same forms as prompts)")
    prompts_per_epoch: int = _f(4, "distinct prompts sampled per epoch", gt=0)
    group_size: int = _f(8, "images per prompt (the group of GRPO / the tracker's batch; > 1: advantages need a group)",
                         gt=1)


@dataclass
class TrainConfig:
    objective: str = _f("pcpo", "clipped (DDPO/DanceGRPO/Flow-GRPO), log_hinge (PCPO-base), pcpo",
                        choices=_registry("pcpo.algo.objectives", "OBJECTIVES"))
    credit: str | None = _f(None, "timestep credit: native, pcpo, uniform (null = the objective's default)",
                            choices=_registry("pcpo.algo.credit", "CREDIT"))
    w_star: float | None = _f(None, "PCPO mean step weight override w* (null = credit preserving); "
                              "an option of credit schemes that declare it", gt=0)
    linear_only: bool = _f(False, "PCPO surrogate with the linear term only")
    clip_range: float = _f(1e-4, "clip range xi of the ratio / hinge", gt=0)
    ratio_transform: str = _f("none", "per-step transform of the log-ratio before the objective (none; "
                              "see pcpo.algo.step.RATIO_TRANSFORMS)",
                              choices=_registry("pcpo.algo.step", "RATIO_TRANSFORMS"))
    ratio_transform_options: dict = _f(help="keyword options of the ratio transform", factory=dict)
    loss_weight: str = _f("none", "per-step weight of the objective's terms (none; see "
                          "pcpo.algo.step.LOSS_WEIGHTS)", choices=_registry("pcpo.algo.step", "LOSS_WEIGHTS"))
    loss_weight_options: dict = _f(help="keyword options of the loss weight", factory=dict)
    sde_window: str = _f("none", "which steps draw noise and are trained in an iteration: none (all), "
                         "flow_grpo_fast, mix_grpo, tempflow (see pcpo.algo.windows.WINDOWS)",
                         choices=_registry("pcpo.algo.windows", "WINDOWS"))
    sde_window_options: dict = _f(help="keyword options of the SDE window (e.g. {size: 2} for flow_grpo_fast)",
                                  factory=dict)
    ema_decay: float = _f(0.0, "EMA of the trained parameters used for evaluation and the final weights "
                          "(0 = off; Flow-GRPO: 0.9), with warm-up min(decay, (1+k)/(10+k))", ge=0, le=1)
    ema_every: int = _f(1, "update the EMA every N optimizer steps (Flow-GRPO: 8)", gt=0)
    adv_clip: float = _f(5.0, "advantages are clipped to +-adv_clip", gt=0)
    advantage: str = _f("group", "group, per_prompt_tracker (DDPO), prompt_mean_global_std (Flow-GRPO)",
                        choices=_registry("pcpo.algo.advantages", "ADVANTAGES"))
    tracker_buffer: int = _f(32, "per_prompt_tracker: rewards kept per prompt", gt=0)
    tracker_min_count: int = _f(16, "per_prompt_tracker: below this many, batch statistics are used", gt=0)
    timestep_selection: str = _f("first_fraction", "all_shuffled (DDPO), drop_last_random (DanceGRPO), "
                                 "first_fraction (Flow-GRPO)", choices=_registry("pcpo.algo.timesteps", "SELECTIONS"))
    timestep_fraction: float = _f(1.0, "fraction of the (eligible) steps trained per trajectory, in (0, 1]",
                                  gt=0, le=1)
    inner_epochs: int = _f(1, "passes over each epoch's rollouts", gt=0)
    minibatch_size: int = _f(0, "trajectories per optimizer step (0 = all of the epoch's); gradients of "
                             "all their trained timesteps are accumulated", ge=0)
    micro_batch: int = _f(64, "(sample, timestep) pairs per forward pass in the update", gt=0)
    lr: float = _f(1e-4, "AdamW learning rate", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", ge=0)
    adam_betas: tuple = _f((0.9, 0.999), "AdamW betas: two numbers in [0, 1)")
    adam_eps: float = _f(1e-8, "AdamW epsilon", gt=0)
    max_grad_norm: float = _f(1.0, "gradient-norm clipping (0 = off)", ge=0)
    kl_beta: float = _f(0.0, "weight of the per-step KL to the reference model (0 = off)", ge=0)
    kl_form: str = _f("pcpo", "pcpo: 1/2 w~^2 |p - p_ref|^2; flow-grpo: |mu - mu_ref|^2/(2 g^2)",
                      choices=_registry("pcpo.algo.objectives", "KL_TERMS"))
    mixed_precision: str = _f("no", "autocast of model forwards (log-ratios stay fp32)", choices=("no", "bf16", "fp16"))
    max_nonfinite: int = _f(3, "stop after this many consecutive updates skipped for a NaN/inf loss or reward", gt=0)


@dataclass
class EvalConfig:
    every: int = _f(5, "evaluate every N epochs (and at the start and end); 0 = only start and end", ge=0)
    images_per_prompt: int = _f(4, "held-out images per prompt", gt=0)
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
    every: int = _f(5, "save a checkpoint every N epochs (and at the end)", gt=0)
    keep_last: int = _f(2, "checkpoints to keep", gt=0)


@dataclass
class RunConfig:
    seed: int = _f(0, "seed of everything (rollout noise, timestep selection, prompts)")
    epochs: int = _f(30, "training epochs (one rollout + update each)", gt=0)
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, ...")
    distributed: str = _f("ddp", "multi-process mode under torchrun: ddp (all-reduce gradients) or fsdp "
                          "(FSDP2 fully_shard)", choices=("ddp", "fsdp"))
    threads: int = _f(0, "torch CPU threads (0 = torch's default)", ge=0)
    model: ModelConfig = _f(factory=ModelConfig, help="the model")
    sampler: SamplerConfig = _f(factory=SamplerConfig, help="the rollout sampler")
    reward: RewardConfig = _f(factory=RewardConfig, help="the reward")
    data: DataConfig = _f(factory=DataConfig, help="prompts and groups")
    train: TrainConfig = _f(factory=TrainConfig, help="objective and optimisation")
    eval: EvalConfig = _f(factory=EvalConfig, help="held-out evaluation")
    log: LogConfig = _f(factory=LogConfig, help="logging")
    checkpoint: CheckpointConfig = _f(factory=CheckpointConfig, help="checkpoints")


# ---------------------------------------------------------------------------- loading & overrides

class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars: ``1e-4`` is a float (YAML 1.1 reads it
    as a string) and only true/false are booleans (``no``, ``off``, ``yes`` stay strings)."""


YamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str, source: str = "config"):
    """Parse YAML with :class:`YamlLoader`; a syntax error is one line naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}:{where}: YAML syntax error: {problem}") from None


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
        value = yaml.load(raw, Loader=YamlLoader) if raw.strip() else ""  # noqa: S506
    except yaml.YAMLError:
        value = raw
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
    data = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of config sections, got {type(data).__name__}")
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


def validate(cfg: RunConfig) -> None:
    """Field checks (:func:`check_fields`) plus the few that involve several fields."""
    from ..algo.credit import CREDIT
    from ..algo.objectives import OBJECTIVES

    check_fields(cfg)
    t = cfg.train
    _check(len(t.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in t.adam_betas),
           f"train.adam_betas: must be two numbers in [0, 1), got {list(t.adam_betas)}")
    credit = t.credit or OBJECTIVES.get(t.objective).default_credit
    for option in ("w_star",):
        _check(getattr(t, option) is None or option in CREDIT.meta(credit)["options"],
               f"train.{option}: not an option of credit {credit!r}; set train.credit to a scheme that takes it "
               f"or remove it")
    _check(bool(cfg.reward.name) or bool(cfg.reward.weights), "reward.name: give a reward name or reward.weights")
    for k, w in cfg.reward.weights.items():
        _check(isinstance(w, (int, float)) and not isinstance(w, bool),
               f"reward.weights.{k}: must be a number, got {w!r}")
    _check(bool(cfg.model.family), "model.family: must be set, e.g. toy-flow")
    _validate_window(cfg)
    _validate_step_options(cfg)


def _validate_step_options(cfg: RunConfig) -> None:
    """The ratio transform's and loss weight's options are the ones their registry entries declare."""
    from ..algo.step import LOSS_WEIGHTS, RATIO_TRANSFORMS

    t = cfg.train
    for field_name, reg, name, opts in (("ratio_transform", RATIO_TRANSFORMS, t.ratio_transform, t.ratio_transform_options),
                                        ("loss_weight", LOSS_WEIGHTS, t.loss_weight, t.loss_weight_options)):
        allowed = tuple(reg.meta(name).get("options", ()))
        unknown = sorted(set(opts) - set(allowed))
        _check(not unknown, f"train.{field_name}_options: {name!r} takes {', '.join(allowed) or 'no options'}; "
               f"got {', '.join(map(str, unknown))}")


def _validate_window(cfg: RunConfig) -> None:
    """SDE windows and the Flash solver need a flow sampler; the window's options are checked here."""
    import torch

    from ..algo.windows import WINDOWS, window_at
    from ..samplers import SAMPLERS

    s, t = cfg.sampler, cfg.train
    window = window_at(t.sde_window, s.steps, 0, torch.Generator().manual_seed(0), t.sde_window_options)
    windowed = t.sde_window != "none"
    flow = [n for n in SAMPLERS if SAMPLERS.meta(n)["kind"] == "flow" and SAMPLERS.meta(n)["train"]]
    _check(not windowed or s.name in flow,
           f"train.sde_window: {t.sde_window} needs a flow SDE sampler ({', '.join(flow)}), not sampler.name={s.name}")
    _check(s.solver == "euler" or (windowed and s.name != "cps"),
           "sampler.solver: dpmsolver++ (MixGRPO-Flash) runs after an SDE window; set train.sde_window "
           "(e.g. mix_grpo) with a flow-matching SDE sampler (not cps), or use solver euler")
    _check(s.solver == "euler" or s.grid == "linspace",
           "sampler.solver: dpmsolver++ rebuilds the shifted linspace grid after the window; set sampler.grid=linspace")
    _check(s.solver == "euler" or (WINDOWS.meta(t.sde_window)["per"] == "iteration" and window.branching == "none"),
           f"sampler.solver: dpmsolver++ needs one window per iteration without branching (mix_grpo), not "
           f"{t.sde_window}; use solver euler")
