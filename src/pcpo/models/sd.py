"""Stable Diffusion 1.x/2.x and SDXL adapters (UNet, ε- or v-prediction, DDIM sampler).

* Time: the DDIM sampler's integer training timesteps go to the UNet unchanged.
* ``ddim_schedule()`` reads the pipeline scheduler's config (whatever scheduler class it ships: SD1.5
  ships PNDM, SDXL Euler; the training schedule fields are the same), so ``DDIMSampler(steps, eta,
  **adapter.ddim_schedule())`` steps exactly like ``DDIMScheduler.from_config(pipe.scheduler.config)``.
* SDXL: two text encoders (penultimate hidden states concatenated, pooled embedding of the second),
  ``add_time_ids = (H, W, 0, 0, H, W)``, zero negative embeddings when the pipeline says
  ``force_zeros_for_empty_prompt`` and no negative prompt is given (the stock behaviour).
"""

from __future__ import annotations

import warnings

import torch

from .base import Conditioning
from .diffusers_base import DiffusersAdapter

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class _UNetAdapter(DiffusersAdapter):
    denoiser_kind = "unet"
    default_lora_targets = UNET_LORA_TARGETS
    convert_lora_to_diffusers = True

    def __init__(self, pipeline, **kwargs):
        super().__init__(pipeline, **kwargs)
        cfg = pipeline.scheduler.config
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"{self.family}: scheduler prediction_type {self.prediction_type!r} is not supported "
                f"(need 'epsilon' or 'v_prediction')"
            )
        if cfg.get("rescale_betas_zero_snr", False):
            raise ValueError(f"{self.family}: rescale_betas_zero_snr schedules are not supported by DDIMSampler")
        if cfg.get("clip_sample", False) and type(pipeline.scheduler).__name__ == "DDIMScheduler":
            warnings.warn(f"{self.family}: the scheduler clips x0 (clip_sample=True); pcpo's DDIM step does not",
                          stacklevel=2)

    def ddim_schedule(self) -> dict:
        """Keyword arguments for :class:`pcpo.samplers.DDIMSampler` from the pipeline's scheduler config."""
        cfg = self.pipe.scheduler.config
        out = dict(
            schedule=cfg.get("beta_schedule", "scaled_linear"),
            beta_start=float(cfg.get("beta_start", 0.00085)),
            beta_end=float(cfg.get("beta_end", 0.012)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            spacing=cfg.get("timestep_spacing", "leading") or "leading",
            steps_offset=int(cfg.get("steps_offset", 0) or 0),
            final_alpha_one=bool(cfg.get("set_alpha_to_one", False)),
            prediction_type=self.prediction_type,
        )
        if cfg.get("trained_betas") is not None:
            out["betas"] = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
        return out


class SDAdapter(_UNetAdapter):
    """Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``)."""

    family = "sd"
    pipeline_class_name = "StableDiffusionPipeline"
    default_pipeline_kwargs = {"safety_checker": None, "requires_safety_checker": False}

    def _encode(self, prompts):
        emb, neg = self.pipe.encode_prompt(
            prompts, self.device, 1, True, negative_prompt=self.negative_prompt
        )
        return {"prompt_embeds": emb}, {"prompt_embeds": neg[:1]}

    def _forward(self, x, t, cond: Conditioning, guidance_scale):
        return self.denoiser(x, t, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]


class SDXLAdapter(_UNetAdapter):
    """Stable Diffusion XL (``StableDiffusionXLPipeline``; base model, no refiner)."""

    family = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    default_pipeline_kwargs = {"add_watermarker": False}

    def _time_ids(self, n: int) -> torch.Tensor:
        h, w = self.resolution
        proj = (self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None else None)
        ids = self.pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=torch.float32,
                                          text_encoder_projection_dim=proj)
        return ids.to(self.device).repeat(n, 1)

    def _encode(self, prompts):
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=self.negative_prompt,
        )
        cond = {"prompt_embeds": emb, "text_embeds": pooled, "time_ids": self._time_ids(len(prompts))}
        uncond = {"prompt_embeds": neg[:1], "text_embeds": neg_pooled[:1], "time_ids": self._time_ids(1)}
        return cond, uncond

    def _forward(self, x, t, cond: Conditioning, guidance_scale):
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        return self.denoiser(x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added,
                             return_dict=False)[0]

    def _unscale_latents(self, z):
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            c = z.shape[1]
            mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, c, 1, 1)
            std = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, c, 1, 1)
            return z * std / cfg.scaling_factor + mean
        return z / cfg.scaling_factor
