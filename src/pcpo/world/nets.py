"""Network definitions of the embedded toy text-to-image models (shared by pretraining and the adapters).

Both toy models are the same pixel-space MMDiT (diffusers ``SD3Transformer2DModel``, 32x32x3, patch 4,
6 layers, width 128; 3.48 M parameters) with a tiny jointly trained ``CLIPTextModelWithProjection``
(hidden 64, 2 layers) on the world's 2000-merge CLIP tokenizer. Why this architecture: on 2 CPU cores it
trains ~4.5x faster per step than the smallest useful ``UNet2DConditionModel`` (measured when the world was built), and it
keeps the RL code on the same MMDiT class as SD3.x.

The text encoder's outputs feed the transformer as ``encoder_hidden_states`` = last hidden state
[B, L, 64] and ``pooled_projections`` = projected EOS embedding [B, 64].
"""

from __future__ import annotations

import torch
from torch import nn

from pcpo.world.tokenizer import MAX_LENGTH

TRANSFORMER_CONFIG: dict = dict(
    sample_size=32,
    patch_size=4,
    in_channels=3,
    out_channels=3,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    caption_projection_dim=128,
    pooled_projection_dim=64,
    pos_embed_max_size=8,
)

TEXT_ENCODER_CONFIG: dict = dict(
    vocab_size=2514,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MAX_LENGTH,
    projection_dim=64,
    bos_token_id=2512,
    eos_token_id=2513,
    pad_token_id=2513,
)


def build_transformer(config: dict | None = None) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**(config or TRANSFORMER_CONFIG))


def build_text_encoder(config: dict | None = None) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(**(config or TEXT_ENCODER_CONFIG)))


def join_state(transformer: nn.Module, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The toy weight-file layout: both state dicts in one, keys prefixed ``transformer.`` / ``text_encoder.``."""
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()})
    return state


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inverse of :func:`join_state`: ``(transformer state, text-encoder state)``; other keys are ignored."""
    parts: tuple[dict, dict] = ({}, {})
    for k, v in state.items():
        for part, prefix in zip(parts, ("transformer.", "text_encoder.")):
            if k.startswith(prefix):
                part[k.removeprefix(prefix)] = v
    return parts


def encode_text(text_encoder: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden [B, L, 64], pooled [B, 64])`` for token ids [B, L]."""
    out = text_encoder(input_ids=input_ids)
    return out.last_hidden_state, out.text_embeds


def transformer_forward(
    transformer: nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    hidden: torch.Tensor,
    pooled: torch.Tensor,
) -> torch.Tensor:
    """Network output (velocity or ε) for pixels ``x`` [B, 3, 32, 32] at model timestep [B] (float)."""
    return transformer(
        hidden_states=x,
        encoder_hidden_states=hidden,
        pooled_projections=pooled,
        timestep=timestep,
        return_dict=False,
    )[0]


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """ᾱ_t (float64 [T]) of SD1.5's "scaled_linear" DDPM schedule (the toy-ddpm model's training schedule)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)
