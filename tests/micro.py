"""A micro text-to-image model (random init, 8×8 pixels) for fast trainer tests.

Not a quality model: it exercises the trainer's mechanics (rollout, CFG, batching, resume, multi-process)
in well under a second per epoch. ``register()`` adds the families ``micro-flow`` and ``micro-ddpm``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pcpo.models.base import ModelAdapter
from pcpo.models.loader import register_model_family
from pcpo.samplers import SCHEDULE_PRESETS


class MicroNet(nn.Module):
    def __init__(self, vocab: int = 64, ch: int = 16, emb: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.t_proj = nn.Linear(16, emb)
        self.inp = nn.Conv2d(3, ch, 3, padding=1)
        self.film = nn.Linear(emb, 2 * ch)
        self.mid = nn.Conv2d(ch, ch, 3, padding=1)
        self.out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x, t, ids):
        freqs = torch.exp(torch.linspace(0, math.log(1000), 8, device=x.device))
        tt = t.float().view(-1, 1) / 1000 * freqs
        temb = self.t_proj(torch.cat([tt.sin(), tt.cos()], dim=1))
        e = self.emb(ids) + temb
        scale, shift = self.film(e).chunk(2, dim=1)
        h = torch.nn.functional.silu(self.inp(x))
        h = h * (1 + scale[..., None, None]) + shift[..., None, None]
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


def _prompt_id(p: str) -> int:
    return 1 + sum(ord(c) for c in p) % 63  # 0 = unconditional


class MicroAdapter(ModelAdapter):
    def __init__(self, prediction_type: str = "flow", seed: int = 0, size: int = 8, device: str = "cpu"):
        torch.manual_seed(seed)
        self.prediction_type = prediction_type
        self.family = "micro-flow" if prediction_type == "flow" else "micro-ddpm"
        self.size = size
        self.denoiser = MicroNet().to(device)

    @classmethod
    def from_spec(cls, spec: dict) -> MicroAdapter:
        kind = "flow" if spec["family"] == "micro-flow" else "epsilon"
        return cls(prediction_type=kind, seed=int(spec.get("seed", 0)), device=spec.get("device", "cpu"))

    def ddim_schedule(self) -> dict:
        if self.prediction_type == "flow":
            raise NotImplementedError
        return dict(SCHEDULE_PRESETS["sd15"])

    def encode_prompts(self, prompts):
        ids = torch.tensor([_prompt_id(p) for p in prompts], device=self.device)
        return {"ids": ids, "uncond": torch.zeros_like(ids)}

    def initial_noise(self, batch_size, generator=None):
        return torch.randn((batch_size, 3, self.size, self.size), generator=generator, device=self.device)

    def predict(self, x, t, cond, guidance_scale):
        t = t * 1000 if self.prediction_type == "flow" else t
        if guidance_scale > 1:
            out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond["ids"], cond["uncond"]]))
            c, u = out.chunk(2)
            return (u + guidance_scale * (c - u)).float()
        return self.denoiser(x, t, cond["ids"]).float()

    def decode(self, x):
        return ((x.float() + 1) / 2).clamp(0, 1)


def redness(images, prompts):
    """Reward: mean red minus mean green/blue (rises when the model learns to paint red)."""
    return images[:, 0].mean(dim=(1, 2)) - 0.5 * images[:, 1:].mean(dim=(1, 2, 3))


def register() -> None:
    register_model_family("micro-flow", MicroAdapter.from_spec)
    register_model_family("micro-ddpm", MicroAdapter.from_spec)
    from pcpo.rewards.registry import _REGISTRY

    _REGISTRY.setdefault("redness", lambda **kw: redness)
