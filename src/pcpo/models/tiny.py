"""Tiny random-weight diffusers pipelines of every supported family, built offline from configs.

For tests and ``scripts/gpu_smoke.py --tiny``: the real diffusers/transformers classes at toy sizes
(every block type, a few channels), a byte-level CLIP tokenizer built without downloads (no merges, or
a handful, is a valid ``CLIPTokenizer``), saved with ``save_pretrained`` so adapters load them through
the same ``from_pretrained`` path as real checkpoints. Images are 32×32 (the 2-block VAE downsamples ×2).
"""

from __future__ import annotations

import os

import torch

FAMILIES = ("sd", "sdxl", "sd3", "flux")
TOKEN_LENGTH = 16


def tiny_clip_tokenizer(max_length: int = TOKEN_LENGTH):
    """A byte-level ``CLIPTokenizer`` (514 symbols + specials, a few merges), built in memory."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = alphabet + [a + "</w>" for a in alphabet]
    merges = [("r", "e"), ("re", "d</w>"), ("c", "a"), ("ca", "t</w>")]
    vocab += ["re", "red</w>", "ca", "cat</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length)


def _clip_config(tok, hidden: int = 32, projection: int = 32, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=tok.model_max_length, projection_dim=projection,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="gelu",
    )


def _t5(tok, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=0,
    ))


def _vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=32, **kw,
    )


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def build_tiny_pipeline(family: str, seed: int = 0, prediction_type: str = "epsilon"):
    """A random-weight pipeline of ``family`` (``sd``, ``sdxl``, ``sd3``, ``flux``), fp32, CPU."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    if family == "sd":
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        )
        return StableDiffusionPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok, unet=unet,
            scheduler=_ddim(prediction_type), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(force_upcast=True), text_encoder=CLIPTextModel(_clip_config(tok)),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer=tok,
            tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=_ddim(prediction_type),
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    if family == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
            pos_embed_max_size=32,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer=tok,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=_t5(tok), tokenizer_3=tiny_clip_tokenizer(),
        )
    if family == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        sched = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxPipeline(
            scheduler=sched,
            vae=_vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok, text_encoder_2=_t5(tok),
            tokenizer_2=tiny_clip_tokenizer(), transformer=transformer,
        )
        return pipe
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def save_tiny_pipeline(family: str, directory: str, seed: int = 0, prediction_type: str = "epsilon") -> str:
    """Build and ``save_pretrained`` a tiny pipeline; returns ``directory``."""
    os.makedirs(directory, exist_ok=True)
    build_tiny_pipeline(family, seed=seed, prediction_type=prediction_type).save_pretrained(directory)
    return directory


# Settings under which the tiny pipelines are cheap: 32×32 images, 16-token prompts.
TINY_SPEC_DEFAULTS: dict[str, dict] = {
    "sd": {"resolution": 32},
    "sdxl": {"resolution": 32},
    "sd3": {"resolution": 32, "max_sequence_length": TOKEN_LENGTH},
    "flux": {"resolution": 32, "max_sequence_length": TOKEN_LENGTH},
}
