"""Shared machinery of the diffusers-backed adapters (SD1.x/2.x, SDXL, SD3.x, FLUX.1).

A :class:`DiffusersAdapter` owns a stock diffusers pipeline loaded with ``from_pretrained``. It uses the
pipeline's own ``encode_prompt`` (so conditioning is bit-for-bit what the stock pipeline computes), caches
the embeddings per unique prompt, runs the denoiser with classifier-free guidance as one batched forward
(``cat([uncond, cond])``, the stock order), and decodes with the pipeline's VAE without gradients.

Training modes: LoRA (peft, see :mod:`pcpo.models.lora`; the base weights stay frozen and ``reference()``
switches the adapters off) or full fine-tuning of the denoiser. Text encoders and the VAE are always frozen.
Mixed precision: ``dtype`` is the dtype the pipeline is loaded in; trainable weights are kept in fp32
(``upcast_trainable``) and ``autocast`` runs the denoiser forward under ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..fields import check_fields, from_dict, spec_field
from .base import Conditioning, ModelAdapter
from .lora import LoraSpec, add_lora, save_lora_for_pipeline

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def parse_dtype(value: Any, field: str = "model.dtype") -> torch.dtype | None:
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ValueError(f"{field} must be one of {sorted(DTYPES)} or null, got {value!r}")
    return DTYPES[value]


def parse_resolution(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    h, w = (int(v) for v in value)
    if h <= 0 or w <= 0:
        raise ValueError(f"model.resolution must be positive, got {value!r}")
    return h, w


def diffusers_dtype_kwarg() -> str:
    """``dtype`` on diffusers versions that renamed ``torch_dtype`` (which then warns), else ``torch_dtype``."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    except ImportError:  # pragma: no cover
        return "torch_dtype"


def transformers_dtype_kwarg() -> str:
    """``dtype`` on transformers >= 4.56 (``torch_dtype`` is the deprecated spelling), else ``torch_dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


#: the ``model`` section's own fields that reach the loader (everything else is in ``model.options``)
MODEL_SPEC_FIELDS = frozenset({"family", "path", "dtype", "lora", "gradient_checkpointing", "detach_uncond"})


@dataclass
class LoaderOptions:
    """``model.options`` of the diffusers families (checked like every config field)."""

    resolution: Any = spec_field(None, "image size: pixels, or [height, width] (null = the model's default)")
    variant: str | None = spec_field(None, "weights variant to load, e.g. fp16")
    revision: str | None = spec_field(None, "hub revision of the pipeline")
    autocast: Any = spec_field(None, "autocast dtype of model forwards, a model.dtype name such as bf16 (null = none)")
    negative_prompt: str | None = spec_field(None, "negative prompt of the unconditional CFG branch")
    upcast_trainable: bool = spec_field(True, "keep trainable weights in fp32 when the model loads in bf16/fp16")
    decode_batch_size: int | None = spec_field(None, "images per VAE decode call (null = all at once)", gt=0)
    pipeline_kwargs: dict = spec_field(help="extra keyword arguments of <Pipeline>.from_pretrained", factory=dict)
    train: str | None = spec_field(None, "lora or full (null = lora when model.lora is set)", choices=("lora", "full"))
    device: str | None = spec_field(None, "device the loader puts the model on (set by the trainer)")


def option_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DiffusersAdapter(ModelAdapter):
    """Base class; subclasses set the class attributes and implement ``_encode``, ``_forward``,
    ``latent_shape`` and optionally ``_unscale_latents``."""

    family: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    denoiser_kind: ClassVar[str]  # "unet" or "transformer"
    default_lora_targets: ClassVar[tuple[str, ...]]
    convert_lora_to_diffusers: ClassVar[bool] = False
    uses_cfg: ClassVar[bool] = True
    default_pipeline_kwargs: ClassVar[dict] = {}

    def __init__(
        self,
        pipeline,
        *,
        lora: LoraSpec | dict | None = None,
        autocast: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        detach_uncond: bool = False,
        resolution: int | Sequence[int] | None = None,
        negative_prompt: str | None = None,
        upcast_trainable: bool = True,
        decode_batch_size: int | None = None,
        device: str | torch.device | None = None,
    ):
        self.pipe = pipeline
        self.denoiser: nn.Module = getattr(pipeline, self.denoiser_kind)
        self.vae = pipeline.vae
        self.detach_uncond = bool(detach_uncond)
        self.negative_prompt = negative_prompt
        self.decode_batch_size = decode_batch_size
        self.autocast_dtype = parse_dtype(autocast, "model.autocast")
        self.lora_spec = lora if isinstance(lora, LoraSpec) or lora is None else LoraSpec.from_config(lora)
        self.load_dtype = self.denoiser.dtype
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = parse_resolution(resolution) or self.default_resolution()
        if self.resolution[0] % (self.vae_scale_factor * self.latent_multiple) or (
            self.resolution[1] % (self.vae_scale_factor * self.latent_multiple)
        ):
            raise ValueError(
                f"model.resolution {self.resolution} must be divisible by "
                f"{self.vae_scale_factor * self.latent_multiple} for this {self.family} model"
            )
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._uncond: dict[str, torch.Tensor] | None = None

        # Frozen parts.
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipeline, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        # fp16 VAEs that overflow (SDXL) decode in fp32, as the stock pipeline does.
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)

        # Trainable part.
        if self.lora_spec is not None:
            add_lora(self.denoiser, self.lora_spec, self.default_lora_targets, upcast=upcast_trainable)
            self.compute_dtype = self.load_dtype
        else:
            self.denoiser.requires_grad_(True)
            if upcast_trainable and self.load_dtype != torch.float32:
                self.denoiser.to(torch.float32)
            self.compute_dtype = self.denoiser.dtype
        self.denoiser.eval()  # no dropout: the log-ratio must be a deterministic function of the weights
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        if device is not None:
            self.to(device)

    # ---- construction -------------------------------------------------------------------------
    #: the family's ``model.options`` (a subclass of :class:`LoaderOptions` adds family-specific ones)
    Options: ClassVar[type] = LoaderOptions
    SPEC_KEYS: ClassVar[set[str]] = set(MODEL_SPEC_FIELDS) | option_names(LoaderOptions)

    @classmethod
    def extra_spec_keys(cls) -> set[str]:
        """The family's options beyond :class:`LoaderOptions`."""
        return option_names(cls.Options) - option_names(LoaderOptions)

    @classmethod
    def pipeline_class(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_class_name)

    @classmethod
    def load_pipeline(cls, path: str, *, dtype: torch.dtype | None = None, variant: str | None = None,
                      revision: str | None = None, **kwargs):
        """``<Pipeline>.from_pretrained`` with a one-line error when the weights cannot be found."""
        pipe_cls = cls.pipeline_class()
        kw = dict(cls.default_pipeline_kwargs)
        kw.update(kwargs)
        if dtype is not None:
            kw[diffusers_dtype_kwarg()] = dtype
        if variant is not None:
            kw["variant"] = variant
        if revision is not None:
            kw["revision"] = revision
        try:
            return pipe_cls.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"model.path: cannot load {path!r} as a {pipe_cls.__name__} ({first[:300]}); give a local "
                f"diffusers directory or a hub id that is downloaded (HF_HUB_OFFLINE=1 forbids downloads)"
            ) from None

    @classmethod
    def from_spec(cls, spec: dict) -> DiffusersAdapter:
        """Build from a config section ``{family, path, lora: {rank, alpha, targets}, dtype, ...}``."""
        spec = dict(spec)
        unknown = set(spec) - cls.SPEC_KEYS - cls.extra_spec_keys()
        if unknown:
            raise ValueError(
                f"model: unknown keys {sorted(unknown)} for family {cls.family!r}; "
                f"allowed: {sorted(cls.SPEC_KEYS | cls.extra_spec_keys())}"
            )
        if not spec.get("path"):
            raise ValueError(f"model.path: give a hub id or local diffusers directory for family {cls.family!r}")
        opts = from_dict(cls.Options, {k: v for k, v in spec.items() if k not in MODEL_SPEC_FIELDS}, "model.options.")
        check_fields(opts, "model.options.")
        has_lora = spec.get("lora") is not None and spec.get("lora") is not False
        train = opts.train or ("lora" if has_lora else "full")
        lora = spec.get("lora") if train == "lora" else None
        if train == "lora" and not lora:
            lora = {}
        pipe = cls.load_pipeline(spec["path"], dtype=parse_dtype(spec.get("dtype")), variant=opts.variant,
                                 revision=opts.revision, **dict(opts.pipeline_kwargs or {}))
        kwargs = {k: getattr(opts, k) for k in cls.extra_spec_keys()}
        return cls(
            pipe,
            lora=LoraSpec.from_config(lora) if train == "lora" else None,
            autocast=opts.autocast,
            gradient_checkpointing=bool(spec.get("gradient_checkpointing", False)),
            detach_uncond=bool(spec.get("detach_uncond", False)),
            resolution=opts.resolution,
            negative_prompt=opts.negative_prompt,
            upcast_trainable=opts.upcast_trainable,
            decode_batch_size=opts.decode_batch_size,
            device=opts.device or default_device(),
            **kwargs,
        )

    # ---- geometry ------------------------------------------------------------------------------
    latent_multiple: ClassVar[int] = 1  # latent side must be divisible by this (FLUX packing: 2)

    def default_resolution(self) -> tuple[int, int]:
        size = self.denoiser.config.sample_size * self.vae_scale_factor
        return size, size

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        h, w = self.resolution
        return (batch_size, self.latent_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    # ---- conditioning --------------------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Encode unique ``prompts`` with the pipeline: (conditional tensors [U, ...], unconditional tensors
        [1, ...] or None when the family has no CFG)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = [str(p) for p in prompts]
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            cond, uncond = self._encode(new)
            for i, p in enumerate(new):
                self._cache[p] = {k: v[i] for k, v in cond.items()}
            if uncond is not None and self._uncond is None:
                self._uncond = {k: v[0] for k, v in uncond.items()}
        if not prompts:
            raise ValueError("encode_prompts: need at least one prompt")
        keys = self._cache[prompts[0]].keys()
        out = {k: torch.stack([self._cache[p][k] for p in prompts]) for k in keys}
        if self._uncond is not None:
            for k, v in self._uncond.items():
                out["uncond_" + k] = v.unsqueeze(0).expand(len(prompts), *v.shape).contiguous()
        return out

    def clear_prompt_cache(self) -> None:
        self._cache.clear()
        self._uncond = None

    # ---- noise and prediction ------------------------------------------------------------------
    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(self.latent_shape(batch_size), generator=generator, device=self.device,
                            dtype=torch.float32)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """One denoiser forward on an already CFG-batched input (``x`` in compute dtype)."""
        raise NotImplementedError

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        do_cfg = self.uses_cfg and guidance_scale > 1.0
        base = {k: v for k, v in cond.items() if not k.startswith("uncond_")}
        if do_cfg:
            missing = [k for k in base if "uncond_" + k not in cond]
            if missing:
                raise ValueError(f"predict: conditioning lacks unconditional tensors for {missing}")
            x_in = torch.cat([x, x])
            t_in = torch.cat([t, t])
            c_in = {k: torch.cat([cond["uncond_" + k], v]) for k, v in base.items()}
        else:
            x_in, t_in, c_in = x, t, base
        c_in = {k: v.to(self.device, self.compute_dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in c_in.items()}
        with self._autocast():
            out = self._forward(x_in.to(self.compute_dtype), t_in, c_in, guidance_scale)
        out = out.float()
        if do_cfg:
            p_u, p_c = out.chunk(2)
            if self.detach_uncond:
                p_u = p_u.detach()
            out = p_u + guidance_scale * (p_c - p_u)
        return out

    # ---- decode --------------------------------------------------------------------------------
    def _unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None)
        z = z / cfg.scaling_factor
        return z + shift if shift is not None else z

    def _prepare_for_decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        vae_dtype = self.vae.dtype
        chunks = [x] if not self.decode_batch_size else list(x.split(int(self.decode_batch_size)))
        images = []
        for chunk in chunks:
            z = self._unscale_latents(self._prepare_for_decode(chunk.detach().float()))
            img = self.vae.decode(z.to(self.vae.device, vae_dtype), return_dict=False)[0]
            images.append((img.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)

    # ---- training ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.vae.device

    def to(self, device: torch.device | str) -> DiffusersAdapter:
        self.pipe.to(device)
        self._cache = {p: {k: v.to(device) for k, v in c.items()} for p, c in self._cache.items()}
        if self._uncond is not None:
            self._uncond = {k: v.to(device) for k, v in self._uncond.items()}
        return self

    def save_trained(self, directory: str | os.PathLike) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` loadable by ``<Pipeline>.load_lora_weights(directory)``;
        full fine-tuning: the denoiser in diffusers format (``<Model>.from_pretrained(directory)``)."""
        directory = str(directory)
        if self.uses_lora:
            save_lora_for_pipeline(type(self.pipe), self.denoiser_kind, self.denoiser, directory,
                                   self.convert_lora_to_diffusers)
        else:
            self.denoiser.save_pretrained(directory, safe_serialization=True)

    def describe(self) -> dict:
        n_train = sum(p.numel() for p in self.trainable_parameters())
        return {
            "family": self.family, "prediction_type": self.prediction_type, "resolution": list(self.resolution),
            "dtype": str(self.load_dtype).replace("torch.", ""), "lora": self.uses_lora,
            "trainable_params": n_train,
        }
