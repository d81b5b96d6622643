"""FLUX.1 adapter (dev/schnell; packed latents, rotary image ids, distilled guidance embedding).

* State: unpacked latents ``[B, C, H/8, W/8]`` (what the trainer and samplers see); the adapter packs
  them into 2×2 patches (``[B, HW/4, 4C]``) for the transformer and unpacks the velocity.
* Time: the flow sampler's ``t`` in [0, 1] goes to the transformer as is (the stock pipeline passes
  ``timesteps / 1000``; the transformer multiplies by 1000 internally).
* Guidance: FLUX.1-dev is guidance-distilled: ``guidance_scale`` goes to the guidance embedding and there
  is no second (unconditional) forward. Models without ``guidance_embeds`` (schnell) ignore it.
* ``flow_grid(N)`` is the stock pipeline's sigmas: ``linspace(1, 1/N, N)`` with the resolution-dependent
  exponential shift ``mu`` (dynamic shifting), plus the terminal 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..fields import spec_field
from .base import Conditioning
from .diffusers_base import DiffusersAdapter, LoaderOptions
from .sd3 import MMDIT_LORA_TARGETS, _shift_params, calculate_shift


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, (H/2)(W/2), 4C]`` (diffusers ``FluxPipeline._pack_latents``)."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for latent size ``h × w``."""
    b, _, ch = z.shape
    z = z.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, ch // 4, h, w)


def latent_image_ids(h2: int, w2: int, device, dtype) -> torch.Tensor:
    """Rotary position ids ``[h2·w2, 3]`` of the packed latent grid (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


@dataclass
class FluxOptions(LoaderOptions):
    """``model.options`` of FLUX.1: the diffusers options plus the T5 prompt length."""

    max_sequence_length: int = spec_field(512, "T5 tokens per prompt (DanceGRPO: 512)", gt=0)


class FluxAdapter(DiffusersAdapter):
    """FLUX.1 (``FluxPipeline``)."""

    family = "flux"
    pipeline_class_name = "FluxPipeline"
    denoiser_kind = "transformer"
    default_lora_targets = MMDIT_LORA_TARGETS
    prediction_type = "flow"
    uses_cfg: ClassVar[bool] = False
    latent_multiple: ClassVar[int] = 2

    def __init__(self, pipeline, *, max_sequence_length: int = 512, **kwargs):
        self.max_sequence_length = int(max_sequence_length)
        self._text_ids: torch.Tensor | None = None
        super().__init__(pipeline, **kwargs)

    Options: ClassVar[type] = FluxOptions

    def default_resolution(self) -> tuple[int, int]:
        size = int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale_factor
        return size, size

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser.config.get("guidance_embeds", False))

    @property
    def default_shift(self) -> float:
        return float(self.pipe.scheduler.config.get("shift", 1.0))

    def image_seq_len(self) -> int:
        _, _, h, w = self.latent_shape(1)
        return (h // 2) * (w // 2)

    def flow_grid(self, num_steps: int) -> torch.Tensor:
        """The stock pipeline's sigmas for ``num_steps`` steps (N + 1 values, last 0), float64."""
        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        if sched.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(self.image_seq_len(), *_shift_params(sched.config, 1.15))
        sched.set_timesteps(num_steps, device="cpu", sigmas=sigmas, mu=mu)
        return sched.sigmas.to(torch.float64)

    def _encode(self, prompts):
        emb, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        self._text_ids = text_ids
        return {"prompt_embeds": emb, "pooled_projections": pooled}, None

    def _forward(self, x, t, cond: Conditioning, guidance_scale):
        b, _, h, w = x.shape
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=x.device, dtype=torch.float32)
        if self._text_ids is None or self._text_ids.shape[0] != cond["prompt_embeds"].shape[1]:
            self._text_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=x.device)
        out = self.denoiser(
            hidden_states=pack_latents(x),
            timestep=t.to(torch.float32),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=self._text_ids.to(x.device, x.dtype),
            img_ids=latent_image_ids(h // 2, w // 2, x.device, x.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def to(self, device):
        super().to(device)
        if self._text_ids is not None:
            self._text_ids = self._text_ids.to(device)
        return self
