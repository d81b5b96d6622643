#!/usr/bin/env python
"""Real-size check of the diffusers adapters: every family's denoiser at its published width, on CPU.

Without downloads, the script builds each family's denoiser from its published architecture values with
random weights (SD1.5 and SDXL ``UNet2DConditionModel``, the SD3.5-Medium ``SD3Transformer2DModel`` with
its dual-attention layers, FLUX.1-dev at full width with fewer blocks), one-layer text encoders of the
real hidden widths (so conditioning has the real shapes: SD1.5 77×768; SDXL 77×2048 + pooled 1280;
SD3 77+256 = 333 × 4096 + pooled 2048; FLUX T5 512×4096 + pooled 768) and a narrow VAE with the real
latent channels and ×8 downsampling. It then drives pcpo's own code: the family adapter with peft LoRA,
``Trainer(cfg, run_dir, adapter=..., reward_fn=...).train_epoch(1)`` (a 2-step rollout at 512 px and one
update of one trained step per trajectory), a full fine-tuning update where memory allows, and the LoRA
round trip into the stock pipeline class (``pipe.load_lora_weights(dir)``).

Each case runs in its own subprocess with one torch thread; its peak RSS (``resource.getrusage``) is
compared with an analytic estimate: weights + trainable state (parameters, gradients, AdamW moments)
+ activations saved for backward, derived block by block from the architecture (what each op keeps for
backward: ``activation_model``), with and without gradient checkpointing, + a process baseline. The
activation term is checked exactly against the bytes autograd really saved during the update's forward
(``saved_tensors_hooks``); the same model then projects per-GPU memory of the published GPU setups.

    python benchmarks/real_size.py                  # every case (~30 min on 1 core), writes benchmarks/real-size/
    python benchmarks/real_size.py --cases sd15-lora sd35m-lora-ckpt
    python benchmarks/real_size.py --quick --out /tmp/rs   # SD3.5-M width, 2 blocks, 256 px: ~1 min
    python benchmarks/real_size.py --project-only   # the GPU projection table from the model alone
    python benchmarks/real_size.py --report         # rewrite benchmarks/REAL_SIZE.md tables from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "real-size"
GIB = 1024 ** 3

# =============================================================================================
# Published architecture values (the `config.json` of each checkpoint's denoiser / encoders / VAE)
# =============================================================================================

#: runwayml/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

#: stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}

#: stabilityai/stable-diffusion-3.5-medium, transformer/config.json (MMDiT-X: dual attention in blocks 0-12)
SD35M_TRANSFORMER = {
    "attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": list(range(13)),
    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
    "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
    "sample_size": 128,
}

#: black-forest-labs/FLUX.1-dev, transformer/config.json (19 double-stream + 38 single-stream blocks)
FLUX1_DEV_TRANSFORMER = {
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}

#: text encoders: CLIP ViT-L/14 text tower, OpenCLIP ViT-bigG/14 text tower, T5-v1.1-XXL encoder
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_BIGG = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
             "num_attention_heads": 20, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
          "feed_forward_proj": "gated-gelu"}

#: VAEs: SD1.x/SDXL (4 latent channels) and SD3/FLUX (16 latent channels, no quant convs); scaling factors
VAE_BASE = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "norm_num_groups": 32}
VAE_LATENT = {
    "sd": {"latent_channels": 4, "scaling_factor": 0.18215},
    "sdxl": {"latent_channels": 4, "scaling_factor": 0.13025, "force_upcast": True},
    "sd3": {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False,
            "use_post_quant_conv": False},
    "flux": {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
             "use_post_quant_conv": False},
}

#: which text encoders each pipeline holds (name -> (published config, class))
TEXT_ENCODERS = {
    "sd": {"text_encoder": (CLIP_L, "CLIPTextModel")},
    "sdxl": {"text_encoder": (CLIP_L, "CLIPTextModel"), "text_encoder_2": (CLIP_BIGG, "CLIPTextModelWithProjection")},
    "sd3": {"text_encoder": (CLIP_L, "CLIPTextModelWithProjection"),
            "text_encoder_2": (CLIP_BIGG, "CLIPTextModelWithProjection"), "text_encoder_3": (T5_XXL, "T5EncoderModel")},
    "flux": {"text_encoder": (CLIP_L, "CLIPTextModel"), "text_encoder_2": (T5_XXL, "T5EncoderModel")},
}

LORA_TARGETS_UNET = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS_MMDIT = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

# =============================================================================================
# Cases run on CPU
# =============================================================================================


@dataclass
class Case:
    """One measured configuration (one subprocess)."""

    name: str
    family: str                      # adapter family: sd, sdxl, sd3, flux
    arch: dict                       # denoiser config (published values, depth possibly reduced)
    train: str = "lora"              # lora | full
    rank: int = 32
    alpha: float = 64.0
    checkpointing: bool = False
    resolution: int = 512
    guidance: float = 4.5            # > 1: CFG (two rows per sample) for the families that use it
    steps: int = 2
    max_sequence_length: int | None = None   # T5 tokens (sd3: 256, flux: 512)
    minibatch: int = 0               # trajectories per optimizer step (0 = both: one step per epoch)
    note: str = ""

    @property
    def cfg_rows(self) -> int:
        return 2 if (self.guidance > 1.0 and self.family != "flux") else 1


def _flux_arch(double: int, single: int) -> dict:
    return {**FLUX1_DEV_TRANSFORMER, "num_layers": double, "num_single_layers": single}


def default_cases() -> dict[str, Case]:
    cases = [
        Case("sd15-lora", "sd", SD15_UNET, rank=4, alpha=4, guidance=5.0,
             note="DDPO's setting: LoRA r4 on the attention projections, CFG 5 (2 rows per forward)"),
        Case("sd15-lora-ckpt", "sd", SD15_UNET, rank=4, alpha=4, guidance=5.0, checkpointing=True),
        Case("sd15-full-ckpt", "sd", SD15_UNET, train="full", guidance=1.0, checkpointing=True, minibatch=1,
             note="full fine-tuning: fp32 weights + gradients + AdamW moments = 16 bytes per parameter; two "
                  "optimizer steps so the second backward runs with the moments allocated (the steady state); "
                  "no CFG to stay under 14 GiB"),
        Case("sdxl-lora-ckpt", "sdxl", SDXL_UNET, rank=32, alpha=64, guidance=1.0, checkpointing=True,
             note="no CFG (1 row) to keep the CPU time down; rows scale the activation term linearly"),
        Case("sd35m-lora-ckpt", "sd3", SD35M_TRANSFORMER, rank=32, alpha=64, guidance=1.0, checkpointing=True,
             max_sequence_length=256, note="all 24 blocks incl. the 13 dual-attention ones; no CFG"),
        Case("flux-d2s4-lora", "flux", _flux_arch(2, 4), rank=32, alpha=64, guidance=3.5,
             max_sequence_length=512, note="FLUX.1 width, 2 double + 4 single blocks (of 19 + 38)"),
    ]
    return {c.name: c for c in cases}


def quick_case() -> Case:
    arch = {**SD35M_TRANSFORMER, "num_layers": 2, "dual_attention_layers": [0]}
    return Case("quick-sd35m-2blocks", "sd3", arch, rank=8, alpha=16, guidance=4.5, resolution=256,
                max_sequence_length=64, note="SD3.5-M width, blocks 0 (dual attention) and 1 (last), 256 px")


# =============================================================================================
# Building the CPU pipelines (random weights, no downloads)
# =============================================================================================


def _clip_tokenizer(max_length: int):
    from pcpo.models.tiny import tiny_clip_tokenizer

    return tiny_clip_tokenizer(max_length=max_length)


def _text_encoder(published: dict, cls_name: str, tok, layers: int = 1):
    """A one-layer encoder with the published hidden width (and projection width)."""
    import transformers

    if cls_name == "T5EncoderModel":
        cfg = transformers.T5Config(vocab_size=len(tok), d_model=published["d_model"], d_ff=256, d_kv=64, num_heads=2,
                                    num_layers=layers, feed_forward_proj="gated-gelu", pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
        return transformers.T5EncoderModel(cfg)
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=published["hidden_size"], intermediate_size=published["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=published["num_attention_heads"], max_position_embeddings=77,
        projection_dim=published["projection_dim"], hidden_act=published["hidden_act"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return getattr(transformers, cls_name)(cfg)


def _cpu_vae(family: str):
    """The real latent channels, scaling and ×8 downsampling (4 blocks), at a narrow width: the VAE only
    decodes the rollout's final latents without gradients and is not what this check measures."""
    from diffusers import AutoencoderKL

    kw = dict(VAE_LATENT[family])
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=32, sample_size=512, **kw)


def build_pipeline(case: Case, seed: int = 0):
    """The family's stock diffusers pipeline around the real-width denoiser (fp32, CPU, random weights)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    tok = _clip_tokenizer(77)
    encoders = {name: _text_encoder(cfg, cls, tok) for name, (cfg, cls) in TEXT_ENCODERS[case.family].items()}
    vae = _cpu_vae(case.family)
    if case.family in ("sd", "sdxl"):
        unet = diffusers.UNet2DConditionModel(**case.arch)
        if case.family == "sd":  # the published SD1.5 scheduler (PNDM; pcpo reads its training schedule)
            sched = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                                            steps_offset=1)
            return diffusers.StableDiffusionPipeline(vae=vae, tokenizer=tok, unet=unet, scheduler=sched,
                                                     safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False, **encoders)
        sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
        return diffusers.StableDiffusionXLPipeline(vae=vae, tokenizer=tok, tokenizer_2=_clip_tokenizer(77), unet=unet,
                                                   scheduler=sched, force_zeros_for_empty_prompt=True,
                                                   add_watermarker=False, **encoders)
    if case.family == "sd3":
        transformer = diffusers.SD3Transformer2DModel(**case.arch)
        sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        return diffusers.StableDiffusion3Pipeline(transformer=transformer, scheduler=sched, vae=vae, tokenizer=tok,
                                                  tokenizer_2=_clip_tokenizer(77), tokenizer_3=_clip_tokenizer(77),
                                                  **encoders)
    if case.family == "flux":
        transformer = diffusers.FluxTransformer2DModel(**case.arch)
        sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                          base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                          max_image_seq_len=4096)
        return diffusers.FluxPipeline(transformer=transformer, scheduler=sched, vae=vae, tokenizer=tok,
                                      tokenizer_2=_clip_tokenizer(77), **encoders)
    raise ValueError(f"family must be sd, sdxl, sd3 or flux, got {case.family!r}")


def build_adapter(case: Case, pipe):
    """The pcpo adapter around ``pipe``, constructed as ``load_model`` does after ``from_pretrained``."""
    from pcpo.models.flux import FluxAdapter
    from pcpo.models.lora import LoraSpec
    from pcpo.models.sd import SDAdapter, SDXLAdapter
    from pcpo.models.sd3 import SD3Adapter

    cls = {"sd": SDAdapter, "sdxl": SDXLAdapter, "sd3": SD3Adapter, "flux": FluxAdapter}[case.family]
    kw = {}
    if case.max_sequence_length is not None:
        kw["max_sequence_length"] = case.max_sequence_length
    lora = LoraSpec(rank=case.rank, alpha=case.alpha) if case.train == "lora" else None
    return cls(pipe, lora=lora, gradient_checkpointing=case.checkpointing, resolution=case.resolution,
               device="cpu", **kw)


# =============================================================================================
# Analytic memory model
# =============================================================================================
#
# Activations: what autograd keeps for backward, per row of the forward (one CFG branch of one sample),
# counted in elements and derived op by op from the diffusers modules (frozen weights under LoRA):
#   LayerNorm / GroupNorm / RMSNorm / SiLU / GELU   keep their input
#   Conv2d                                         keeps its input (also when the weight is frozen)
#   frozen Linear                                   keeps nothing but its weight; a LoRA Linear keeps its input
#                                                   (lora_A) and the rank-r projection (lora_B)
#   scaled_dot_product_attention (flash, CPU/GPU)   keeps q, k, v, out and the log-sum-exp
#   products with a frozen gate / modulation        keep only the (per-row) gate
# Everything upstream of the first LoRA layer keeps nothing (its inputs do not require grad). Under full
# fine-tuning every linear keeps its input and modulations keep both factors.
# Gradient checkpointing (diffusers: every resnet and transformer block, except the mid block's first resnet)
# keeps only the inputs of checkpointed units, plus what the unchecked glue saves; the backward pass then
# recomputes one unit at a time, which adds that unit's saved activations to the peak.


@dataclass
class Unit:
    name: str
    saved: float            # elements saved for backward when the unit is not checkpointed
    inputs: float = 0.0     # elements of the unit's inputs (kept alive when it is checkpointed)
    ckpt: bool = False      # checkpointed when gradient checkpointing is on


def _transformer2d_units(prefix, C, hw, Lc, d_ctx, n_blocks, heads, linear_proj, mode, r, grad_in, ctx_seen):
    """diffusers ``Transformer2DModel`` (continuous input) with ``n_blocks`` ``BasicTransformerBlock``s."""
    lora = mode == "lora"
    units = []
    gn = C * hw if (grad_in or not lora) else 0.0
    if linear_proj:
        proj_in = 0.0 if lora else C * hw       # frozen Linear keeps nothing
        proj_out = 0.0 if lora else C * hw
    else:
        proj_in = C * hw if (grad_in or not lora) else 0.0   # 1x1 conv keeps its input
        proj_out = C * hw
    units.append(Unit(prefix + ".norm+proj_in", gn + proj_in))
    if not ctx_seen[0]:   # the text states: kept once (by the first cross-attention's lora_A / as a checkpoint input)
        units.append(Unit("encoder_hidden_states", Lc * d_ctx))
        ctx_seen[0] = True
    for j in range(n_blocks):
        g = grad_in or j > 0 or not lora
        L = hw
        # norm1 in, lora in (q/k/v share it), attn1 q,k,v,out (to_out's input is the sdpa output), norm2 in,
        # attn2 lora-q in, q, out, norm3 in, GEGLU: projection output (2 x 4C) and gelu(gate) (4C)
        per_tok = (1 if g else 0) + 1 + 4 + 1 + 1 + 2 + 1 + 12
        saved = per_tok * L * C + 2 * Lc * C + 2 * heads * L       # + attn2 k, v; log-sum-exp of both attentions
        if lora:
            saved += (4 + 2) * L * r + 2 * Lc * r                     # lora_B inputs
        else:
            saved += (1 + 4) * L * C                                   # ff.net.0.proj and ff.net.2 inputs
        units.append(Unit(f"{prefix}.transformer_blocks.{j}", saved, inputs=L * C, ckpt=True))
    units.append(Unit(prefix + ".proj_out", proj_out))
    return units


def _resnet(name, c_in, c_out, hw, mode, grad_in, ckpt=True):
    saved = 3 * c_in * hw + 3 * c_out * hw if (grad_in or mode == "full") else 0.0
    return Unit(name, saved, inputs=c_in * hw if (grad_in or mode == "full") else 0.0, ckpt=ckpt)


def unet_units(arch: dict, latent_hw: tuple[int, int], Lc: int, mode: str, r: int) -> list[Unit]:
    """Units of a ``UNet2DConditionModel`` forward (diffusers' down / mid / up structure)."""
    chans = list(arch["block_out_channels"])
    nl = arch["layers_per_block"]
    tl = arch.get("transformer_layers_per_block", 1)
    tl = [tl] * len(chans) if isinstance(tl, int) else list(tl)
    heads = arch["attention_head_dim"]          # diffusers' name for the number of heads in these UNets
    heads = [heads] * len(chans) if isinstance(heads, int) else list(heads)
    linear = bool(arch.get("use_linear_projection", False))
    d_ctx = arch["cross_attention_dim"]
    h, w = latent_hw
    units: list[Unit] = []
    ctx_seen = [False]
    lora = mode == "lora"
    grad = not lora          # does the running activation require grad (LoRA: only after the first LoRA layer)
    if not lora:
        units.append(Unit("conv_in", arch["in_channels"] * h * w))
    skips = [chans[0]]       # channels of the skip tensors
    c = chans[0]
    for i, (kind, co) in enumerate(zip(arch["down_block_types"], chans)):
        hw = (h >> i) * (w >> i)
        for j in range(nl):
            units.append(_resnet(f"down_blocks.{i}.resnets.{j}", c, co, hw, mode, grad))
            c = co
            if kind.startswith("CrossAttn"):
                units += _transformer2d_units(f"down_blocks.{i}.attentions.{j}", co, hw, Lc, d_ctx, tl[i], heads[i],
                                              linear, mode, r, grad, ctx_seen)
                grad = True
            skips.append(co)
        if i < len(chans) - 1:
            units.append(Unit(f"down_blocks.{i}.downsamplers.0", co * hw if grad else 0.0))
            skips.append(co)
    hw = (h >> (len(chans) - 1)) * (w >> (len(chans) - 1))
    units.append(_resnet("mid_block.resnets.0", c, c, hw, mode, grad, ckpt=False))
    units += _transformer2d_units("mid_block.attentions.0", c, hw, Lc, d_ctx, tl[-1], heads[-1], linear, mode, r,
                                  grad, ctx_seen)
    units.append(_resnet("mid_block.resnets.1", c, c, hw, mode, True))
    rev = list(reversed(chans))
    rev_tl, rev_heads = list(reversed(tl)), list(reversed(heads))
    for i, (kind, co) in enumerate(zip(arch["up_block_types"], rev)):
        level = len(chans) - 1 - i
        hw = (h >> level) * (w >> level)
        for j in range(nl + 1):
            skip = skips.pop()
            units.append(_resnet(f"up_blocks.{i}.resnets.{j}", c + skip, co, hw, mode, True))
            c = co
            if kind.startswith("CrossAttn"):
                units += _transformer2d_units(f"up_blocks.{i}.attentions.{j}", co, hw, Lc, d_ctx, rev_tl[i],
                                              rev_heads[i], linear, mode, r, True, ctx_seen)
        if i < len(chans) - 1:
            units.append(Unit(f"up_blocks.{i}.upsamplers.0", co * hw * 4))   # conv on the 2x upsampled map
    units.append(Unit("conv_norm_out+act+conv_out", 3 * chans[0] * h * w))
    return units


def sd3_units(arch: dict, latent_hw: tuple[int, int], Lc: int, mode: str, r: int) -> list[Unit]:
    """``SD3Transformer2DModel``: joint (MMDiT) blocks, dual attention (image self-attention ``attn2``) in
    ``dual_attention_layers``, qk RMS-norm, the last block context-pre-only."""
    if mode != "lora":
        raise NotImplementedError("sd3: the activation model covers LoRA training")
    p = arch["patch_size"]
    L = (latent_hw[0] // p) * (latent_hw[1] // p)
    d = arch["num_attention_heads"] * arch["attention_head_dim"]
    H = arch["num_attention_heads"]
    n = arch["num_layers"]
    dual = set(arch.get("dual_attention_layers") or ())
    T = L + Lc
    units = []
    for i in range(n):
        g = 1 if i > 0 else 0
        last = i == n - 1
        img = g + 1 + 2 + 1 + 4                  # norm1 in, lora in, q/k before RMS-norm, norm2 in, FF gelu in
        n_lora_img = 4
        if i in dual:
            img += 1 + 2 + 4                     # attn2: lora in, q/k before RMS-norm, sdpa q, k, v, out
            n_lora_img += 4
        ctx = g + 1 + 2 + (0 if last else 1 + 4)
        n_lora_ctx = 3 + (0 if last else 1)
        saved = img * L * d + ctx * Lc * d + 5 * T * d    # joint sdpa q, k, v, out + the output copy
        saved += H * T + (H * L if i in dual else 0)      # log-sum-exp
        saved += n_lora_img * L * r + n_lora_ctx * Lc * r
        units.append(Unit(f"transformer_blocks.{i}", saved, inputs=T * d, ckpt=True))
    units.append(Unit("norm_out", L * d))
    return units


def flux_units(arch: dict, latent_hw: tuple[int, int], Lc: int, mode: str, r: int, rows: int = 1) -> list[Unit]:
    """``FluxTransformer2DModel`` on 2x2-packed latents: double-stream blocks then single-stream blocks (the
    default LoRA targets reach q/k/v of the single blocks, which have no ``to_out``). With more than one row
    the text / image halves of the joint attention output are non-contiguous views, which ``to_add_out`` and
    ``to_out`` copy (and keep) before their matmul: one more T x d per double block."""
    L = (latent_hw[0] // 2) * (latent_hw[1] // 2)
    d = arch["num_attention_heads"] * arch["attention_head_dim"]
    H = arch["num_attention_heads"]
    T = L + Lc
    lora = mode == "lora"
    units = []
    split_copy = T * d if rows > 1 else 0.0
    for i in range(arch["num_layers"]):
        if lora:
            g = 1 if i > 0 else 0
            per = g + 1 + 2 + 1 + 4              # norm1 in, lora in, q/k before RMS-norm, norm2 in, FF gelu in
            saved = per * T * d + 4 * T * d + H * T + 4 * T * r + split_copy
        else:  # + modulated norms, the gated branches, FF in/out linears, the RMS-norm outputs
            saved = 20 * T * d + 4 * T * d + H * T + split_copy
        units.append(Unit(f"transformer_blocks.{i}", saved, inputs=T * d, ckpt=True))
    for i in range(arch["num_single_layers"]):
        if lora:   # norm in, act_mlp in (4d), lora in, q/k before RMS-norm, sdpa q, k, v, out
            saved = 12 * T * d + H * T + 3 * T * r
        else:      # + modulation, proj_out in (attention + MLP = 5d), RMS-norm outputs, gate
            saved = 21 * T * d + H * T
        units.append(Unit(f"single_transformer_blocks.{i}", saved, inputs=T * d, ckpt=True))
    # norm_out's input is the last block's output: the joint (text + image) states after single blocks
    last = T * d if arch["num_single_layers"] else L * d
    if lora:
        units.append(Unit("norm_out", last))
    else:   # + the normalised and the modulated states (proj_out input), the x / context embedder inputs
        units.append(Unit("norm_out+proj_out+embedders",
                          last + 2 * L * d + L * arch["in_channels"] + Lc * arch["joint_attention_dim"]))
    return units


def model_units(family: str, arch: dict, resolution: int, text_tokens: int, mode: str, r: int,
                rows: int = 1) -> list[Unit]:
    """The units of one forward, counted per row (``rows``: the forward's batch, for layout effects only)."""
    lat = (resolution // 8, resolution // 8)
    if family in ("sd", "sdxl"):
        return unet_units(arch, lat, text_tokens, mode, r)
    if family == "sd3":
        return sd3_units(arch, lat, text_tokens, mode, r)
    if family == "flux":
        return flux_units(arch, lat, text_tokens, mode, r, rows)
    raise ValueError(family)


def text_tokens(family: str, max_sequence_length: int | None) -> int:
    if family in ("sd", "sdxl"):
        return 77
    if family == "sd3":
        return 77 + (max_sequence_length or 256)
    return max_sequence_length or 512


def activation_model(units: list[Unit], checkpointing: bool) -> dict:
    """Elements per row: saved during the forward (``persistent``) and the extra held while the backward
    recomputes the largest checkpointed unit (``recompute``)."""
    if not checkpointing:
        return {"persistent": sum(u.saved for u in units), "recompute": 0.0}
    persistent = sum(u.inputs if u.ckpt else u.saved for u in units)
    recompute = max((u.saved for u in units if u.ckpt), default=0.0)
    return {"persistent": persistent, "recompute": recompute}


def param_count_meta(cls_path: str, config: dict, buffers: bool = False) -> int:
    """Exact parameter (or buffer) count of a published architecture, built on the meta device (no memory)."""
    import importlib

    import torch

    mod, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(mod), name)
    with torch.device("meta"):
        if mod.startswith("transformers"):
            import transformers

            cfg_cls = {"T5EncoderModel": transformers.T5Config}.get(name, transformers.CLIPTextConfig)
            model = cls(cfg_cls(**config))
        else:
            model = cls(**config)
    return sum(p.numel() for p in (model.buffers() if buffers else model.parameters()))


def lora_param_count(family: str, arch: dict, rank: int, targets=None) -> int:
    """LoRA parameters for ``targets`` (default: the adapter's), counted on a meta-device denoiser."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    cls = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
           "flux": "FluxTransformer2DModel"}[family]
    import diffusers

    targets = list(targets or (LORA_TARGETS_UNET if family in ("sd", "sdxl") else LORA_TARGETS_MMDIT))
    with torch.device("meta"):
        model = getattr(diffusers, cls)(**arch)
        model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


# Calibration constants: measured once on this machine class (see REAL_SIZE.md), not fitted per case.
#: transient memory at the peak, in units of the largest single unit's per-row I/O (grad buffers, the
#: intermediates of the op running at the peak); validated on every measured case
TRANSIENT_UNIT_IO = 4.0
#: process memory beyond imports and tensors on CPU (library workspaces and caches created by the first
#: forward, Python objects of the pipeline and trainer); calibrated on ``sd15-lora``
RUNTIME_OVERHEAD_GIB = 0.1


@dataclass
class Estimate:
    weights_gib: float
    trainable_gib: float
    activations_gib: float
    recompute_gib: float
    transient_gib: float
    baseline_gib: float
    total_gib: float
    detail: dict = field(default_factory=dict)


def estimate_memory(*, family: str, arch: dict, mode: str, rank: int, resolution: int, tokens: int, rows: int,
                    checkpointing: bool, weight_bytes: float, act_bytes: float, other_weight_params: int,
                    denoiser_params: int, trainable_params: int, trainable_bytes_per_param: float = 16.0,
                    shard: int = 1, baseline_gib: float = 0.0, buffers: int = 0) -> Estimate:
    """Peak memory of one update = weights + trainable state + saved activations (+ recompute) + transient
    + process baseline. ``trainable_bytes_per_param`` 16 = fp32 parameter + gradient + two AdamW moments;
    ``buffers``: non-parameter tensors of the modules (SD3's 384x384 sin-cos position table: 0.23 B values)."""
    units = model_units(family, arch, resolution, tokens, mode, rank, rows)
    act = activation_model(units, checkpointing)
    unit_io = max((u.inputs for u in units if u.inputs), default=0.0)
    if mode == "full":
        # the trainable fp32 copy replaces the frozen weights of the denoiser
        weights = (other_weight_params + buffers) * weight_bytes
        trainable = denoiser_params * trainable_bytes_per_param / shard
    else:
        weights = (other_weight_params + denoiser_params + buffers) * weight_bytes
        trainable = trainable_params * trainable_bytes_per_param
    a = act["persistent"] * rows * act_bytes
    rc = act["recompute"] * rows * act_bytes
    tr = TRANSIENT_UNIT_IO * unit_io * rows * act_bytes
    total = weights + trainable + a + rc + tr + baseline_gib * GIB
    return Estimate(weights / GIB, trainable / GIB, a / GIB, rc / GIB, tr / GIB, baseline_gib, total / GIB,
                    {"units": len(units), "persistent_elements_per_row": act["persistent"],
                     "recompute_elements_per_row": act["recompute"], "unit_io_elements_per_row": unit_io})


# =============================================================================================
# Measurement: saved tensors, RSS, timings (inside the per-case subprocess)
# =============================================================================================


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (and so ``getrusage``'s ``ru_maxrss``) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class RSSMonitor:
    """Samples the resident set every ``interval`` s in a thread and keeps the peak per phase label."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = rss_bytes()
            if r > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = r
            time.sleep(self.interval)

    def set(self, phase: str):
        r = rss_bytes()
        if r > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = r
        self.phase = phase

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class SavedTensorMeter:
    """Bytes autograd keeps for backward during a module's forward: unique storages of the saved tensors
    (``torch.autograd.graph.saved_tensors_hooks``) plus the inputs of checkpointed units (kept alive by
    ``torch.utils.checkpoint``), parameters excluded. Optionally attributes them to named units."""

    def __init__(self, model, units: tuple = ()):
        import torch

        self.torch = torch
        self.model = model
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.records: list[dict] = []
        self._seen: dict[int, tuple[str, int]] = {}
        self._ctx = None
        self._stack = ["<top>"]
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]
        for name, m in model.named_modules():
            if units and isinstance(m, units):
                self._handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: self._stack.append(n)))
                self._handles.append(m.register_forward_hook(lambda mod, a, o: self._pop()))
            fn = getattr(m, "_gradient_checkpointing_func", None)
            if fn is not None and not getattr(fn, "_pcpo_meter", False):
                m._gradient_checkpointing_func = self._wrap_ckpt(fn)
        self._t0 = 0.0

    def _pop(self):
        self._stack.pop()

    def _note(self, t, owner=None):
        s = t.untyped_storage()
        p = s.data_ptr()
        if p in self.params:
            return
        if p not in self._seen:
            self._seen[p] = (owner or self._stack[-1], s.nbytes(), [])
        self._seen[p][2].append(weakref.ref(t))

    def _wrap_ckpt(self, fn):
        meter = self

        def wrapped(function, *args, **kwargs):
            if meter._ctx is not None:
                for a in list(args) + list(kwargs.values()):
                    if isinstance(a, meter.torch.Tensor):
                        meter._note(a, owner=getattr(function, "__class__", type(function)).__name__ + ".ckpt_input")
            return fn(function, *args, **kwargs)

        wrapped._pcpo_meter = True
        return wrapped

    def _pre(self, mod, args, kwargs=None):
        if self.torch.is_grad_enabled() and self._ctx is None:
            self._seen = {}
            self._ctx = self.torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self._ctx.__enter__()
            self._t0 = time.perf_counter()

    def _post(self, mod, args, out):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
            # only what is still referenced once the forward returns (a checkpointed unit whose output
            # needs no gradient, upstream of the first LoRA layer, drops its inputs again)
            alive = [(owner, nb) for owner, nb, refs in self._seen.values() if any(r() is not None for r in refs)]
            per_unit: dict[str, int] = {}
            for owner, nb in alive:
                per_unit[owner] = per_unit.get(owner, 0) + nb
            self.records.append({"bytes": sum(nb for _, nb in alive), "per_unit": per_unit,
                                 "forward_s": time.perf_counter() - self._t0})
            self._seen = {}

    def _pack(self, t):
        self._note(t)
        return t

    def remove(self):
        for h in self._handles:
            h.remove()


class ForwardTimer:
    """Wall time of every denoiser forward, split by grad mode, with the rows of each call."""

    def __init__(self, model, monitor: RSSMonitor | None = None):
        import torch

        self.torch = torch
        self.calls: list[dict] = []
        self.monitor = monitor
        self._t = None
        self._h = [model.register_forward_pre_hook(self._pre, with_kwargs=True), model.register_forward_hook(self._post)]

    def _pre(self, mod, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self._rows = int(x.shape[0])
        self._grad = self.torch.is_grad_enabled()
        if self.monitor is not None and self.monitor.phase in ("rollout", "update"):
            self.monitor.set("update" if self._grad else "rollout")
        self._t = time.perf_counter()

    def _post(self, mod, args, out):
        self.calls.append({"grad": self._grad, "rows": self._rows, "s": time.perf_counter() - self._t})

    def remove(self):
        for h in self._h:
            h.remove()


def tiny_epoch_config(case: Case, run_dir: Path):
    """A config whose first epoch is 1 prompt × 2 samples, ``case.steps`` sampler steps, one trained step
    per trajectory, micro-batches of one sample (``cfg_rows`` rows per forward), no KL, no evaluation."""
    from pcpo.trainer.config import load_config

    sampler = {
        "sd": ["sampler.name=ddim", "sampler.eta=1.0", "train.timestep_selection=all_shuffled"],
        "sdxl": ["sampler.name=ddim", "sampler.eta=1.0", "train.timestep_selection=all_shuffled"],
        "sd3": ["sampler.name=flow-sde", "sampler.eta=0.7", "sampler.shift=3.0",
                "train.timestep_selection=first_fraction"],
        "flux": ["sampler.name=dance-sde", "sampler.eta=0.3", "sampler.shift=3.0",
                 "train.timestep_selection=drop_last_random"],
    }[case.family]
    overrides = [
        f"model.family={case.family}", "device=cpu", "threads=1", "epochs=1",
        "data.prompts=[a photo of a red apple on a wooden table]", "data.eval_prompts=[a red apple]",
        "data.prompts_per_epoch=1", "data.group_size=2", "eval.every=0", "eval.gold=false", "eval.grid=false",
        "log.progress=false", "log.tensorboard=false", f"sampler.steps={case.steps}", "sampler.rollout_batch=1",
        f"sampler.guidance_scale={case.guidance}", "train.micro_batch=1", f"train.minibatch_size={case.minibatch}",
        f"train.timestep_fraction={1.0 / case.steps}", "train.lr=1e-4", "train.objective=pcpo",
        "train.advantage=group", "train.kl_beta=0", "train.max_grad_norm=1.0", *sampler,
    ]
    return load_config(None, overrides)


def brightness_reward(images, prompts):
    """A weightless reward (mean intensity): the check is about memory, not about what is learnt."""
    return images.float().mean(dim=(1, 2, 3))


def _checksum(params) -> float:
    return float(sum(p.detach().double().sum() for p in params))


def lora_round_trip(adapter, directory: Path) -> dict:
    """Save the trained LoRA, load it into the stock pipeline class under a second adapter name, and compare
    the weights (bitwise) and one prediction with either adapter active."""
    import torch
    from peft.utils import get_peft_model_state_dict

    from pcpo.models.lora import ADAPTER_NAME, lora_state_dict

    adapter.save_trained(directory)
    trained = lora_state_dict(adapter.denoiser)
    pipe = adapter.pipe
    pipe.load_lora_weights(str(directory), adapter_name="loaded")
    loaded = {k: v.detach() for k, v in get_peft_model_state_dict(adapter.denoiser, adapter_name="loaded").items()}
    same_keys = sorted(trained) == sorted(loaded)
    max_diff = max(((trained[k].float() - loaded[k].float()).abs().max().item() for k in trained if k in loaded),
                   default=float("inf"))
    cfg_t, cfg_l = adapter.denoiser.peft_config[ADAPTER_NAME], adapter.denoiser.peft_config["loaded"]
    # the same prediction with either adapter active (rank, alpha and every weight must have made it)
    res = adapter.resolution
    adapter.resolution = (adapter.vae_scale_factor * 2 * adapter.latent_multiple * 4,) * 2   # a small latent
    try:
        g = torch.Generator().manual_seed(0)
        x = adapter.initial_noise(1, generator=g)
        cond = adapter.encode_prompts(["a photo of a red apple on a wooden table"])
        t = torch.tensor([0.5 if adapter.prediction_type == "flow" else 500.0])
        with torch.no_grad():
            p_trained = adapter.predict(x, t, cond, 1.0)
            adapter.denoiser.set_adapter("loaded")
            p_loaded = adapter.predict(x, t, cond, 1.0)
            adapter.denoiser.set_adapter(ADAPTER_NAME)
    finally:
        adapter.resolution = res
    pred_diff = (p_trained - p_loaded).abs().max().item()
    return {
        "keys": len(trained), "same_keys": same_keys, "max_abs_weight_diff": max_diff,
        "rank_alpha_trained": [cfg_t.r, cfg_t.lora_alpha], "rank_alpha_loaded": [cfg_l.r, cfg_l.lora_alpha],
        "max_abs_prediction_diff": pred_diff, "prediction_scale": p_trained.abs().max().item(),
        "ok": bool(same_keys and max_diff == 0.0 and cfg_t.r == cfg_l.r and cfg_t.lora_alpha == cfg_l.lora_alpha
                   and pred_diff <= 1e-6 * max(1.0, p_trained.abs().max().item())),
        "file_bytes": (directory / "pytorch_lora_weights.safetensors").stat().st_size,
    }


def lora_coverage(denoiser) -> dict:
    """Share of each block type's Linear weights that carry a LoRA adapter (peft ``base_layer``)."""
    from torch import nn

    out: dict[str, list[int]] = {}
    for name, m in denoiser.named_modules():
        if not isinstance(m, nn.Linear) or ".lora_" in name:
            continue
        parts = name.split(".")
        kind = parts[0] if parts[0] not in ("down_blocks", "up_blocks") else parts[0] + "." + parts[2]
        if parts[0] in ("transformer_blocks", "single_transformer_blocks", "mid_block"):
            kind = parts[0]
        adapted = name.endswith(".base_layer")
        tot = out.setdefault(kind, [0, 0])
        tot[0] += m.weight.numel()
        tot[1] += m.weight.numel() if adapted else 0
    return {k: round(v[1] / v[0], 4) for k, v in sorted(out.items()) if v[0]}


def run_case_child(case: Case, out_path: Path) -> dict:
    """Run one case in this process (called in a fresh subprocess) and write its JSON."""
    import torch

    torch.set_num_threads(1)
    baseline = rss_bytes()
    result: dict = {"case": asdict(case), "torch": torch.__version__}
    import diffusers
    import peft
    import transformers

    from pcpo.trainer.trainer import Trainer

    result["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "transformers": transformers.__version__, "peft": peft.__version__}
    baseline = rss_bytes()
    with RSSMonitor() as mon, tempfile.TemporaryDirectory() as tmp:
        mon.set("build")
        t0 = time.perf_counter()
        pipe = build_pipeline(case)
        adapter = build_adapter(case, pipe)
        result["build_s"] = time.perf_counter() - t0
        den = adapter.denoiser
        base_params = sum(p.numel() for n, p in den.named_parameters() if "lora_" not in n)
        lora_params = sum(p.numel() for n, p in den.named_parameters() if "lora_" in n)
        other = sum(p.numel() for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
                    for p in (getattr(pipe, name).parameters() if getattr(pipe, name, None) is not None else []))
        buffers = sum(b.numel() for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae", "unet",
                                             "transformer")
                      for b in (getattr(pipe, name).buffers() if getattr(pipe, name, None) is not None else []))
        result["params"] = {"denoiser": base_params, "lora": lora_params, "text_encoders+vae": other,
                            "buffers": buffers, "trainable": sum(p.numel() for p in adapter.trainable_parameters())}
        if case.train == "lora":
            result["lora_coverage"] = lora_coverage(den)
        mon.set("trainer")
        cfg = tiny_epoch_config(case, Path(tmp) / "run")
        trainer = Trainer(cfg, Path(tmp) / "run", adapter=adapter, reward_fn=brightness_reward)
        result["trainer_api"] = "Trainer(cfg, run_dir, adapter=, reward_fn=).train_epoch(epoch)"
        meter = SavedTensorMeter(den)
        timer = ForwardTimer(den, mon)
        before = _checksum(trainer.params)
        result["rss_before_epoch_bytes"] = rss_bytes()
        result["peak_rss_build_bytes"] = peak_rss_bytes()
        reset_peak_rss()   # the build's transients (e.g. SD3's sin-cos position table) are not the training peak
        mon.set("rollout")
        t0 = time.perf_counter()
        record = trainer.train_epoch(1)
        result["epoch_s"] = time.perf_counter() - t0
        after = _checksum(trainer.params)
        meter.remove()
        timer.remove()
        mon.set("after_update")
        result["record"] = {k: v for k, v in record.items() if not isinstance(v, list)}
        result["trainable_checksum_change"] = after - before
        result["forwards"] = timer.calls
        result["saved_bytes_per_update_forward"] = [r["bytes"] for r in meter.records]
        result["forward_s_with_grad"] = [r["forward_s"] for r in meter.records]
        result["peak_rss_during_update_bytes"] = mon.peaks.get("update", 0)
        result["peak_rss_bytes"] = peak_rss_bytes()   # getrusage: the epoch's (rollout + update) peak
        if case.train == "lora":
            mon.set("roundtrip")
            result["lora_round_trip"] = lora_round_trip(adapter, Path(tmp) / "lora")
        mon.set("end")
    result["rss_phase_peaks_bytes"] = mon.peaks
    result["baseline_rss_bytes"] = baseline
    result["estimate"] = asdict(case_estimate(case, result))
    out_path.write_text(json.dumps(result, indent=1))
    return result


def case_estimate(case: Case, measured: dict) -> Estimate:
    """The memory model for a measured CPU case (fp32 everywhere), with its measured process baseline."""
    p = measured["params"]
    return estimate_memory(
        family=case.family, arch=case.arch, mode=case.train, rank=case.rank, resolution=case.resolution,
        tokens=text_tokens(case.family, case.max_sequence_length), rows=case.cfg_rows,
        checkpointing=case.checkpointing, weight_bytes=4, act_bytes=4, other_weight_params=p["text_encoders+vae"],
        denoiser_params=p["denoiser"], trainable_params=p["lora"],
        baseline_gib=measured["baseline_rss_bytes"] / GIB + RUNTIME_OVERHEAD_GIB, buffers=p.get("buffers", 0),
    )


def denoiser_forward_inputs(family: str, arch: dict, resolution: int, tokens: int, rows: int = 1):
    """Random inputs of the real shapes for one denoiser forward."""
    import torch

    g = torch.Generator().manual_seed(0)
    h = resolution // 8
    if family in ("sd", "sdxl"):
        kw = {"sample": torch.randn(rows, 4, h, h, generator=g), "timestep": torch.full((rows,), 500),
              "encoder_hidden_states": torch.randn(rows, tokens, arch["cross_attention_dim"], generator=g)}
        if family == "sdxl":
            kw["added_cond_kwargs"] = {"text_embeds": torch.randn(rows, 1280, generator=g),
                                       "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution,
                                                                  resolution]] * rows, dtype=torch.float32)}
        return kw
    if family == "sd3":
        return {"hidden_states": torch.randn(rows, 16, h, h, generator=g), "timestep": torch.full((rows,), 500.0),
                "encoder_hidden_states": torch.randn(rows, tokens, 4096, generator=g),
                "pooled_projections": torch.randn(rows, arch["pooled_projection_dim"], generator=g)}
    from pcpo.models.flux import latent_image_ids, pack_latents

    return {"hidden_states": pack_latents(torch.randn(rows, 16, h, h, generator=g)),
            "timestep": torch.full((rows,), 0.5), "guidance": torch.full((rows,), 3.5),
            "pooled_projections": torch.randn(rows, arch["pooled_projection_dim"], generator=g),
            "encoder_hidden_states": torch.randn(rows, tokens, 4096, generator=g),
            "txt_ids": torch.zeros(tokens, 3), "img_ids": latent_image_ids(h // 2, h // 2, "cpu", torch.float32)}


def build_denoiser(family: str, arch: dict, mode: str, rank: int, checkpointing: bool = False, seed: int = 0):
    import diffusers
    import torch

    from pcpo.models.lora import LoraSpec, add_lora

    torch.manual_seed(seed)
    cls = {"sd": diffusers.UNet2DConditionModel, "sdxl": diffusers.UNet2DConditionModel,
           "sd3": diffusers.SD3Transformer2DModel, "flux": diffusers.FluxTransformer2DModel}[family]
    model = cls(**arch)
    if mode == "lora":
        add_lora(model, LoraSpec(rank=rank, alpha=rank),
                 LORA_TARGETS_UNET if family in ("sd", "sdxl") else LORA_TARGETS_MMDIT)
    else:
        model.requires_grad_(True)
    model.eval()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model


def activation_check(family: str, arch: dict, *, resolution: int, tokens: int, mode: str = "lora", rank: int = 4,
                     checkpointing: bool = False, rows: int = 1, model=None) -> dict:
    """Bytes autograd saved in one forward of the real-width denoiser vs the activation model."""

    model = model if model is not None else build_denoiser(family, arch, mode, rank, checkpointing)
    meter = SavedTensorMeter(model)
    out = model(**denoiser_forward_inputs(family, arch, resolution, tokens, rows), return_dict=False)[0]
    meter.remove()
    measured = meter.records[-1]["bytes"]
    units = model_units(family, arch, resolution, tokens, mode, rank, rows)
    predicted = activation_model(units, checkpointing)["persistent"] * rows * 4
    del out
    return {"family": family, "mode": mode, "checkpointing": checkpointing, "resolution": resolution,
            "tokens": tokens, "rows": rows, "measured_bytes": measured, "model_bytes": predicted,
            "ratio": predicted / measured}


# =============================================================================================
# Projection to the published GPU setups
# =============================================================================================


@dataclass
class GPUSetup:
    """A reference training script's per-GPU setting; memory is projected with bf16 frozen weights and
    activations, fp32 trainable weights with fp32 gradients and AdamW moments (pcpo's mixed precision)."""

    name: str
    source: str
    family: str
    arch: dict
    mode: str                    # lora | full
    resolution: int
    rows: int                    # rows per training forward (micro-batch x 2 with CFG)
    checkpointing: bool
    rank: int = 0
    text_tokens: int | None = None
    text_encoders_on_gpu: bool = True
    shard: int = 1               # FSDP world size sharding the trainable state
    fsdp_units: str = "blocks"   # what FSDP all-gathers at once: "blocks" (one wrap per block, two in flight,
    #                              DanceGRPO's transformer_auto_wrap_policy) or "root" (one wrap: the whole model)
    note: str = ""


def gpu_setups() -> list[GPUSetup]:
    return [
        GPUSetup("DDPO SD1.5 LoRA", "kvablack/ddpo-pytorch config/dgx.py (train.batch_size 4, train.cfg)", "sd",
                 SD15_UNET, "lora", 512, 8, False, rank=4),
        GPUSetup("DanceGRPO SD1.5 full", "XueZeyue/DanceGRPO fastvideo/config_sd/dgx.py:hpsv2 (train.batch_size 4, cfg)",
                 "sd", SD15_UNET, "full", 512, 8, False),
        GPUSetup("pcpo real/ddpo-sd15", "src/pcpo/configs/real/ddpo-sd15.yaml (micro_batch 16, CFG 5)", "sd",
                 SD15_UNET, "lora", 512, 32, False, rank=4),
        GPUSetup("SDXL LoRA 1024 px", "SDXL at its native resolution, 1 sample + CFG", "sdxl", SDXL_UNET, "lora",
                 1024, 2, False, rank=32),
        GPUSetup("Flow-GRPO SD3.5-M LoRA", "yifan123/flow_grpo config/grpo.py:pickscore_sd3 (train_batch_size 9, cfg, "
                 "max_sequence_length 128)", "sd3", SD35M_TRANSFORMER, "lora", 512, 18, False, rank=32,
                 text_tokens=77 + 128),
        GPUSetup("pcpo real/flowgrpo-sd35m", "src/pcpo/configs/real/flowgrpo-sd35m.yaml (micro_batch 8, CFG 4.5)", "sd3",
                 SD35M_TRANSFORMER, "lora", 512, 16, False, rank=32, text_tokens=77 + 256),
        GPUSetup("pcpo real/flowgrpo-sd35m + ckpt", "the same with model.gradient_checkpointing: true", "sd3",
                 SD35M_TRANSFORMER, "lora", 512, 16, True, rank=32, text_tokens=77 + 256),
        GPUSetup("DanceGRPO FLUX full 720 px", "XueZeyue/DanceGRPO scripts/finetune/finetune_flux_grpo_8gpus.sh (FSDP 8, "
                 "1 sample per forward, gradient checkpointing, embeddings precomputed)", "flux", FLUX1_DEV_TRANSFORMER,
                 "full", 720, 1, True, text_encoders_on_gpu=False, shard=8),
        GPUSetup("DanceGRPO FLUX full 1024 px", "the same at 1024 px", "flux", FLUX1_DEV_TRANSFORMER, "full", 1024, 1,
                 True, text_encoders_on_gpu=False, shard=8),
        GPUSetup("DanceGRPO FLUX LoRA 720 px", "finetune_flux_grpo_8gpus_lora.sh (rank 128; pcpo's default targets)",
                 "flux", FLUX1_DEV_TRANSFORMER, "lora", 720, 1, True, rank=128, text_encoders_on_gpu=False),
        GPUSetup("pcpo real/dancegrpo-flux", "src/pcpo/configs/real/dancegrpo-flux.yaml (full, FSDP 8, micro_batch 2, "
                 "ckpt; the trainer shards every block, then the root)", "flux", FLUX1_DEV_TRANSFORMER, "full",
                 720, 2, True, shard=8),
        GPUSetup("pcpo real/dancegrpo-flux, one FSDP unit", "the same if the whole denoiser were one FSDP unit "
                 "(what per-block sharding saves)", "flux", FLUX1_DEV_TRANSFORMER, "full", 720, 2, True, shard=8,
                 fsdp_units="root"),
    ]


_COUNT_CACHE: dict[str, int] = {}


def published_param_counts(family: str) -> dict:
    """Exact parameter counts of the published denoiser, text encoders and VAE (meta device)."""
    import transformers  # noqa: F401

    key = family
    if key not in _COUNT_CACHE:
        arch = {"sd": SD15_UNET, "sdxl": SDXL_UNET, "sd3": SD35M_TRANSFORMER, "flux": FLUX1_DEV_TRANSFORMER}[family]
        cls = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
               "flux": "FluxTransformer2DModel"}[family]
        den = param_count_meta("diffusers." + cls, arch)
        enc = sum(param_count_meta("transformers." + c, cfg) for cfg, c in TEXT_ENCODERS[family].values())
        vae = param_count_meta("diffusers.AutoencoderKL", {**VAE_BASE, **VAE_LATENT[family]})
        buf = param_count_meta("diffusers." + cls, arch, buffers=True)
        _COUNT_CACHE[key] = {"denoiser": den, "text_encoders": enc, "vae": vae, "denoiser_buffers": buf,
                             "largest_block": largest_block_params(family, arch)}
    return _COUNT_CACHE[key]


def largest_block_params(family: str, arch: dict) -> int:
    """Parameters of the denoiser's largest block (the unit FSDP gathers when it wraps blocks)."""
    import diffusers
    import torch

    cls = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
           "flux": "FluxTransformer2DModel"}[family]
    with torch.device("meta"):
        model = getattr(diffusers, cls)(**arch)
    lists = [getattr(model, n) for n in ("transformer_blocks", "single_transformer_blocks", "down_blocks", "up_blocks")
             if hasattr(model, n)]
    return max(sum(p.numel() for p in b.parameters()) for lst in lists for b in lst)


def project(setup: GPUSetup) -> dict:
    counts = published_param_counts(setup.family)
    other = counts["vae"] + (counts["text_encoders"] if setup.text_encoders_on_gpu else 0)
    lora = lora_param_count(setup.family, setup.arch, setup.rank) if setup.mode == "lora" else 0
    tokens = setup.text_tokens or text_tokens(setup.family, None)
    est = estimate_memory(family=setup.family, arch=setup.arch, mode=setup.mode, rank=setup.rank or 1,
                          resolution=setup.resolution, tokens=tokens, rows=setup.rows,
                          checkpointing=setup.checkpointing, weight_bytes=2, act_bytes=2, other_weight_params=other,
                          denoiser_params=counts["denoiser"], trainable_params=lora, shard=setup.shard,
                          buffers=counts["denoiser_buffers"])
    est = asdict(est)
    gathered = 0.0
    if setup.shard > 1:   # unsharded fp32 parameters of the FSDP unit(s) being computed
        gathered = (2 * counts["largest_block"] if setup.fsdp_units == "blocks" else counts["denoiser"]) * 4 / GIB
        est["total_gib"] += gathered
    est["fsdp_gathered_gib"] = gathered
    return {"setup": asdict(setup) | {"arch": None}, "params": counts, "lora_params": lora, "tokens": tokens,
            "estimate": est}


# =============================================================================================
# Orchestration, report, CLI
# =============================================================================================


def pre_estimate(case: Case) -> Estimate:
    """The model's estimate before running (the stand-in encoders, VAE and denoiser counted on the meta device)."""
    import diffusers
    import torch

    tok = _clip_tokenizer(77)
    with torch.device("meta"):
        mods = [_text_encoder(cfg, cls, tok) for cfg, cls in TEXT_ENCODERS[case.family].values()]
        mods.append(_cpu_vae(case.family))
        cls = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
               "flux": "FluxTransformer2DModel"}[case.family]
        den = getattr(diffusers, cls)(**case.arch)
    lora = lora_param_count(case.family, case.arch, case.rank) if case.train == "lora" else 0
    params = {"denoiser": sum(p.numel() for p in den.parameters()), "lora": lora,
              "text_encoders+vae": sum(p.numel() for m in mods for p in m.parameters()),
              "buffers": sum(b.numel() for m in [*mods, den] for b in m.buffers())}
    return case_estimate(case, {"params": params, "baseline_rss_bytes": rss_bytes()})


def run_case(case: Case, out_dir: Path, max_rss_gib: float, timeout: int, allocator: str = "mmap") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (f"{case.name}.json" if allocator == "mmap" else f"{case.name}.{allocator}-malloc.json")
    try:
        est = pre_estimate(case)
    except Exception as e:  # noqa: BLE001 - report and go on with the next case
        res = {"case": asdict(case), "failed": f"estimate: {type(e).__name__}: {e}"}
        out.write_text(json.dumps(res, indent=1))
        return res
    if est.total_gib > max_rss_gib:
        res = {"case": asdict(case), "skipped": f"estimated peak {est.total_gib:.1f} GiB > --max-rss-gib {max_rss_gib}",
               "estimate": asdict(est)}
        out.write_text(json.dumps(res, indent=1))
        return res
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error")
    if allocator == "mmap":
        # glibc's dynamic mmap threshold otherwise keeps freed activation-sized blocks on the heap, so RSS would
        # carry allocator retention on top of the live tensors the model counts (reported separately)
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(case)), str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        res = {"case": asdict(case), "failed": "\n".join(tail), "estimate": asdict(est)}
        out.write_text(json.dumps(res, indent=1))
        return res
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    res["allocator"] = allocator
    out.write_text(json.dumps(res, indent=1))
    return res


def summary_row(res: dict) -> dict:
    case = res["case"]
    if "skipped" in res or "failed" in res:
        return {"case": case["name"], "status": res.get("skipped") or "FAILED: " + res["failed"].splitlines()[-1]}
    est = asdict(case_estimate(Case(**case), res))   # recomputed: the model's constants may have moved
    rows = 2 if (case["guidance"] > 1.0 and case["family"] != "flux") else 1
    roll = [c for c in res["forwards"] if not c["grad"]]
    meas_act = res["saved_bytes_per_update_forward"][0] if res["saved_bytes_per_update_forward"] else 0
    peak = res["peak_rss_bytes"] / GIB
    rt = res.get("lora_round_trip")
    rec = res["record"]
    return {
        "case": case["name"], "rows": rows, "ckpt": case["checkpointing"], "train": case["train"],
        "denoiser_params_M": res["params"]["denoiser"] / 1e6, "trainable_params_M": res["params"]["trainable"] / 1e6,
        "peak_rss_gib": peak, "estimate_gib": est["total_gib"], "error_pct": 100 * (est["total_gib"] - peak) / peak,
        "saved_act_measured_gib": meas_act / GIB, "saved_act_model_gib": est["activations_gib"],
        "rollout_forward_s": sum(c["s"] for c in roll) / max(1, len(roll)),
        "update_s": rec["time_update_s"], "updates_skipped": rec["updates_skipped"],
        "log_ratio_before_update_max": rec.get("log_ratio_before_update_max"),
        "round_trip": (None if rt is None else rt["ok"]), "estimate": est,
    }


FAMILY_NAMES = {"sd": "SD1.5", "sdxl": "SDXL", "sd3": "SD3.5-Medium", "flux": "FLUX.1-dev"}
PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
REPORT = ROOT / "benchmarks" / "REAL_SIZE.md"
BEGIN = "<!-- generated by `python benchmarks/real_size.py --report`: do not edit below -->"
END = "<!-- end of generated tables -->"


def model_label(family: str, arch: dict) -> str:
    """``SD1.5``; for reduced depth the blocks kept (``FLUX.1-dev, 2 + 4 of 19 + 38 blocks``)."""
    name = FAMILY_NAMES[family]
    if family == "flux" and (arch["num_layers"], arch["num_single_layers"]) != (19, 38):
        return f"{name}, {arch['num_layers']} + {arch['num_single_layers']} of 19 + 38 blocks"
    if family == "sd3" and arch["num_layers"] != SD35M_TRANSFORMER["num_layers"]:
        return f"{name}, {arch['num_layers']} of {SD35M_TRANSFORMER['num_layers']} blocks"
    return name


def _order(results: list[dict]) -> list[dict]:
    names = list(default_cases())
    return sorted(results, key=lambda r: (names.index(r["case"]["name"]) if r["case"]["name"] in names else len(names),
                                          r["case"]["name"]))


def markdown_tables(results: list[dict], projections: list[dict]) -> str:
    results = _order(results)
    lines = ["| model | case | denoiser params | trained | rows/fwd | ckpt | peak RSS measured | estimate | "
             "measured / estimate | saved act. measured / model | rollout step | update per trained step | "
             "LoRA round trip into the stock pipeline |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = summary_row(r)
        case = r["case"]
        label = model_label(case["family"], case["arch"])
        if "status" in s:
            lines.append(f"| {label} | {s['case']} | {s['status']} |" + " |" * 10)
            continue
        rt = r.get("lora_round_trip")
        pipe = PIPELINE_CLASSES[case["family"]]
        if rt is None:
            trip = "- (full fine-tuning)"
        elif rt["ok"]:
            trip = (f"equal in `{pipe}.load_lora_weights` ({rt['keys']} tensors bitwise, r/alpha "
                    f"{rt['rank_alpha_loaded'][0]}/{rt['rank_alpha_loaded'][1]:g}, prediction diff "
                    f"{rt['max_abs_prediction_diff']:.0e})")
        else:
            trip = f"**MISMATCH** in `{pipe}`: {rt}"
        pairs = r["record"].get("trained_pairs") or 1
        lines.append(
            f"| {label} | `{s['case']}` | {s['denoiser_params_M'] / 1e3:.2f} B | {s['trainable_params_M']:.1f} M "
            f"({'LoRA r' + str(case['rank']) if s['train'] == 'lora' else 'full'}) | {s['rows']} | "
            f"{'yes' if s['ckpt'] else 'no'} | {s['peak_rss_gib']:.2f} GiB | {s['estimate_gib']:.2f} GiB | "
            f"{s['peak_rss_gib'] / s['estimate_gib']:.3f} | {s['saved_act_measured_gib']:.3f} / "
            f"{s['saved_act_model_gib']:.3f} GiB | {s['rollout_forward_s']:.1f} s | "
            f"{s['update_s'] / pairs:.0f} s ({s['update_s']:.0f} s / {pairs}) | {trip} |")
    lines += ["", "Estimate breakdown (GiB): weights / trainable state / saved activations / recompute / transient / "
              "process baseline", ""]
    for r in results:
        s = summary_row(r)
        if "status" in s:
            continue
        e = s["estimate"]
        lines.append(f"- `{s['case']}`: {e['weights_gib']:.2f} / {e['trainable_gib']:.2f} / {e['activations_gib']:.2f} "
                     f"/ {e['recompute_gib']:.2f} / {e['transient_gib']:.2f} / {e['baseline_gib']:.2f}")
    if projections:
        lines += ["", "| setup | source | px | rows/fwd | ckpt | trainable | weights | trainable state | "
                  "FSDP gathered | activations (+recompute, transient) | per-GPU total |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in projections:
            s, e = p["setup"], p["estimate"]
            tr = f"{p['lora_params'] / 1e6:.1f} M LoRA r{s['rank']}" if s["mode"] == "lora" else \
                f"{p['params']['denoiser'] / 1e9:.2f} B full" + (f" / FSDP {s['shard']}" if s["shard"] > 1 else "")
            lines.append(f"| {s['name']} | {s['source']} | {s['resolution']} | {s['rows']} | "
                         f"{'yes' if s['checkpointing'] else 'no'} | {tr} | {e['weights_gib']:.1f} | "
                         f"{e['trainable_gib']:.1f} | {e['fsdp_gathered_gib']:.1f} | {e['activations_gib']:.1f} "
                         f"(+{e['recompute_gib']:.1f}, {e['transient_gib']:.1f}) | **{e['total_gib']:.1f} GiB** |")
    return "\n".join(lines)


def write_report(tables: str, path: Path = REPORT) -> None:
    """Replace the generated part of ``path`` (between :data:`BEGIN` and :data:`END`) with ``tables``."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no generated section ({BEGIN!r} ... {END!r}); restore the markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n\n{tables}\n\n{END}{tail}", encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=None, help=f"cases to run (default: all): {sorted(default_cases())}")
    p.add_argument("--quick", action="store_true", help="only the small SD3.5-M-width case (about a minute)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="result directory (one JSON per case)")
    p.add_argument("--max-rss-gib", type=float, default=14.0, help="skip a case whose estimated peak exceeds this")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per case")
    p.add_argument("--allocator", choices=["mmap", "default"], default="mmap",
                   help="mmap: MALLOC_MMAP_THRESHOLD_=65536 so RSS tracks live tensors; default: glibc as is")
    p.add_argument("--project-only", action="store_true", help="print the GPU projection table and exit")
    p.add_argument("--report", action="store_true",
                   help="rewrite the tables of benchmarks/REAL_SIZE.md from the JSON in --out (and print them)")
    p.add_argument("--child", nargs=2, metavar=("CASE_JSON", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_case_child(Case(**json.loads(args.child[0])), Path(args.child[1]))
        return 0
    projections = [project(s) for s in gpu_setups()]
    if args.project_only:
        print(markdown_tables([], projections))
        return 0
    if args.report:
        results = [json.loads(f.read_text()) for f in sorted(args.out.glob("*.json")) if f.name != "projection.json"]
        tables = markdown_tables(results, projections)
        if args.out.resolve() == OUT_DIR.resolve():  # the committed results: the committed report
            write_report(tables)
        print(tables)
        return 0
    if args.quick:
        cases = [quick_case()]
    else:
        table = default_cases()
        unknown = sorted(set(args.cases or []) - set(table))
        if unknown:
            print(f"--cases: unknown {unknown}; choose from {sorted(table)}", file=sys.stderr)
            return 2
        cases = [table[n] for n in (args.cases or table)]
    results = []
    ok = True
    for case in cases:
        print(f"[real-size] {case.name} ...", flush=True)
        res = run_case(case, args.out, args.max_rss_gib, args.timeout, args.allocator)
        results.append(res)
        s = summary_row(res)
        if "status" in s:
            ok = ok and "skipped" in res
            print(f"[real-size] {case.name}: {s['status']}", flush=True)
        else:
            ok = ok and s["updates_skipped"] == 0 and s["round_trip"] is not False
            print(f"[real-size] {case.name}: peak RSS {s['peak_rss_gib']:.2f} GiB, estimate {s['estimate_gib']:.2f} GiB "
                  f"({s['error_pct']:+.1f} %), saved activations {s['saved_act_measured_gib']:.3f} GiB measured / "
                  f"{s['saved_act_model_gib']:.3f} GiB model, rollout forward {s['rollout_forward_s']:.1f} s, update "
                  f"{s['update_s']:.0f} s, LoRA round trip {s['round_trip']}", flush=True)
    (args.out / "projection.json").write_text(json.dumps(projections, indent=1))
    print(markdown_tables(results, projections))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
