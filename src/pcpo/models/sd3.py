"""Stable Diffusion 3.x adapter (MMDiT transformer, rectified flow, three text encoders).

* Time: the flow sampler's ``t`` in [0, 1] (1 = noise) is the scheduler's sigma; the transformer takes
  ``timestep = 1000·t`` (what ``FlowMatchEulerDiscreteScheduler.timesteps`` holds).
* Prediction: the velocity ``v = noise − x_0`` (``prediction_type = "flow"``).
* ``flow_grid(N)`` is the stock pipeline's N + 1 sigmas (static ``shift`` from the scheduler config, or
  resolution-dependent ``mu`` when the config asks for dynamic shifting), so
  ``FlowSampler(N, eta=0, grid=adapter.flow_grid(N))`` reproduces ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..fields import spec_field
from .base import Conditioning
from .diffusers_base import DiffusersAdapter, LoaderOptions

MMDIT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def _shift_params(cfg, default_max_shift: float) -> tuple[int, int, float, float]:
    return (cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", default_max_shift))


def calculate_shift(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float,
                    max_shift: float) -> float:
    """diffusers' resolution-dependent shift ``mu`` (linear in the number of image tokens)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


@dataclass
class SD3Options(LoaderOptions):
    """``model.options`` of SD3.x: the diffusers options plus the T5 prompt length."""

    max_sequence_length: int = spec_field(256, "T5 tokens per prompt (Flow-GRPO: 256)", gt=0)


class SD3Adapter(DiffusersAdapter):
    """Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``)."""

    family = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_kind = "transformer"
    default_lora_targets = MMDIT_LORA_TARGETS
    prediction_type = "flow"

    def __init__(self, pipeline, *, max_sequence_length: int = 256, **kwargs):
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(pipeline, **kwargs)

    Options: ClassVar[type] = SD3Options

    @property
    def default_shift(self) -> float:
        return float(self.pipe.scheduler.config.get("shift", 1.0))

    def image_seq_len(self) -> int:
        _, _, h, w = self.latent_shape(1)
        p = self.denoiser.config.patch_size
        return (h // p) * (w // p)

    def flow_grid(self, num_steps: int) -> torch.Tensor:
        """The stock pipeline's sigmas for ``num_steps`` steps (N + 1 values, last 0), float64."""
        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(self.image_seq_len(), *_shift_params(sched.config, 1.16))
        sched.set_timesteps(num_steps, device="cpu", **kwargs)
        return sched.sigmas.to(torch.float64)

    def _encode(self, prompts):
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=self.negative_prompt,
            max_sequence_length=self.max_sequence_length,
        )
        return ({"prompt_embeds": emb, "pooled_projections": pooled},
                {"prompt_embeds": neg[:1], "pooled_projections": neg_pooled[:1]})

    def _forward(self, x, t, cond: Conditioning, guidance_scale):
        timestep = (t.to(torch.float64) * 1000).to(torch.float32)
        return self.denoiser(
            hidden_states=x, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_projections"], return_dict=False,
        )[0]
