"""Adapters for the two embedded toy text-to-image models (``toy-flow``, ``toy-ddpm``).

Both are the pixel-space MMDiT + tiny CLIP text encoder of :mod:`pcpo.world.nets`, pretrained on the
procedural world by ``pcpo pretrain-toy`` and shipped as fp16 EMA weights under
``pcpo/assets/models/{toy-flow,toy-ddpm}/`` (``model.safetensors`` + ``config.json``). They are loaded as
float32 (for training). The text encoder is frozen; ``denoiser`` is the transformer.

* ``toy-flow``: rectified-flow velocity, sampler time ``t`` in [0, 1] -> network timestep ``1000 t``;
  use :class:`pcpo.samplers.FlowSampler`.
* ``toy-ddpm``: ε-prediction on SD1.5's scaled-linear DDPM schedule; sampler time = integer training
  timestep; use ``DDIMSampler(**adapter.ddim_schedule())``. ``predict`` clips the implied x0 to [-1, 1]
  (``clip_sample``, as the original pixel-space DDPM sampler did).

Conditioning keys: ``prompt_embeds`` [B, L, 64], ``pooled`` [B, 64] and their unconditional
(empty-prompt) copies ``uncond_prompt_embeds``, ``uncond_pooled``. Guidance with scale ``s != 1`` runs
conditional and unconditional rows in one batched forward: ``p = p_u + s (p_c - p_u)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pcpo.models.base import Conditioning, ModelAdapter
from pcpo.world import data, nets
from pcpo.world.errors import WeightsError
from pcpo.world.tokenizer import tokenize

TOY_MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
TOY_NAMES = ("toy-flow", "toy-ddpm")
DEFAULT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


def _rebuild_cmd(name: str) -> str:
    return f"pcpo pretrain-toy --model {name.removeprefix('toy-')} --into-package"


def load_toy_weights(name: str, path: str | Path | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """``(transformer, text_encoder, config)`` of toy model ``name`` in float32 (eval mode).

    Raises :class:`WeightsError` (one line naming the file and the rebuild command) if the weights or
    config are missing or unreadable.
    """
    from safetensors.torch import load_file

    if name not in TOY_NAMES:
        raise ValueError(f"model name: {name!r} is not a toy model; use one of {TOY_NAMES}")
    folder = Path(path) if path is not None else TOY_MODELS_DIR / name
    cfg_file, w_file = folder / "config.json", folder / "model.safetensors"
    fix = f"rebuild it with `{_rebuild_cmd(name)}`"
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise WeightsError(f"toy model file {f} is missing; {fix}")
    try:
        config = json.loads(cfg_file.read_text())
        transformer = nets.build_transformer(config["transformer"])
        text_encoder = nets.build_text_encoder(config["text_encoder"])
    except Exception as e:
        raise WeightsError(f"toy model config {cfg_file} is unreadable ({type(e).__name__}); {fix}") from None
    try:
        tr, te = nets.split_state({k: v.float() for k, v in load_file(str(w_file)).items()})
        transformer.load_state_dict(tr, strict=True)
        missing, unexpected = text_encoder.load_state_dict(te, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise KeyError("text encoder keys")
    except Exception as e:  # truncated/corrupt safetensors, wrong keys or shapes
        raise WeightsError(f"toy model weights {w_file} are unreadable ({type(e).__name__}); {fix}") from None
    return transformer.eval(), text_encoder.eval(), config


class ToyAdapter(ModelAdapter):
    """Common part of the toy adapters (text encoding, batched CFG, decode, LoRA reference)."""

    prediction_type: str
    family: str

    def __init__(
        self,
        transformer: nn.Module,
        text_encoder: nn.Module,
        config: dict,
        device: str | torch.device = "cpu",
        lora: dict | None = None,
    ):
        self.denoiser = transformer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.config = config
        self.lora_spec = None
        if lora is not None:
            from pcpo.models.lora import LoraSpec, add_lora

            self.lora_spec = lora if isinstance(lora, LoraSpec) else LoraSpec.from_config(lora)
            add_lora(self.denoiser, self.lora_spec, DEFAULT_LORA_TARGETS)
        self._uncond: tuple[torch.Tensor, torch.Tensor] | None = None
        self.to(device)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def load(
        cls, device: str | torch.device = "cpu", path: str | Path | None = None, lora: dict | None = None
    ):
        transformer, text_encoder, config = load_toy_weights(cls.family, path)
        return cls(transformer, text_encoder, config, device=device, lora=lora)

    @classmethod
    def from_spec(cls, spec: dict) -> ToyAdapter:
        """Config section ``{family: toy-flow|toy-ddpm, path?, device?, train: full|lora, lora: {rank, ...}}``."""
        allowed = {"family", "path", "device", "train", "lora"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(
                f"model: unknown keys {sorted(unknown)} for family {cls.family!r}; allowed: {sorted(allowed)}"
            )
        train = spec.get("train", "lora" if spec.get("lora") else "full")
        if train not in ("lora", "full"):
            raise ValueError(f"model.train must be 'lora' or 'full', got {train!r}")
        lora = (spec.get("lora") or {}) if train == "lora" else None
        return cls.load(device=spec.get("device") or "cpu", path=spec.get("path"), lora=lora)

    # ---- data flow -------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenize(list(prompts), self.config.get("max_length", 10)).to(self.device)
        return nets.encode_text(self.text_encoder, ids)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts: need at least one prompt")
        hidden, pooled = self._encode(prompts)
        if self._uncond is None or self._uncond[0].device != hidden.device:
            self._uncond = self._encode([""])
        b = len(prompts)
        return {
            "prompt_embeds": hidden,
            "pooled": pooled,
            "uncond_prompt_embeds": self._uncond[0].expand(b, -1, -1).clone(),
            "uncond_pooled": self._uncond[1].expand(b, -1).clone(),
        }

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch_size, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(self.device)

    def _model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        b = x.shape[0]
        ts = self._model_timestep(torch.as_tensor(t, device=x.device).float().reshape(-1).expand(b))
        if guidance_scale == 1.0:
            return nets.transformer_forward(
                self.denoiser, x, ts, cond["prompt_embeds"], cond["pooled"]
            ).float()
        out = nets.transformer_forward(
            self.denoiser,
            torch.cat([x, x]),
            torch.cat([ts, ts]),
            torch.cat([cond["uncond_prompt_embeds"], cond["prompt_embeds"]]),
            torch.cat([cond["uncond_pooled"], cond["pooled"]]),
        ).float()
        uncond, condp = out[:b], out[b:]
        return uncond + guidance_scale * (condp - uncond)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return data.from_model(x.float())

    # ---- training --------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> ToyAdapter:
        self.denoiser.to(device)
        self.text_encoder.to(device)
        self._uncond = None
        return self


    def describe(self) -> dict:
        tr = self.config.get("training", {})
        return {
            "family": self.family,
            "lora": self.uses_lora,
            "pretrain_steps": tr.get("steps"),
            "params": sum(p.numel() for p in self.denoiser.parameters()),
        }


class ToyFlowAdapter(ToyAdapter):
    """toy-flow: rectified-flow velocity model (network timestep ``1000 t``)."""

    prediction_type = "flow"
    family = "toy-flow"

    def _model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return 1000.0 * t


class ToyDDPMAdapter(ToyAdapter):
    """toy-ddpm: ε-prediction on the scaled-linear DDPM schedule (network timestep = training timestep)."""

    prediction_type = "epsilon"
    family = "toy-ddpm"
    #: clip the implied x0 to the data range [-1, 1] and return the matching ε (DDPM/DDIM ``clip_sample``)
    clip_sample: bool = True

    def _model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _alphas_cumprod(self, device: torch.device) -> torch.Tensor:
        s = self.ddim_schedule()
        ac = nets.scaled_linear_alphas_cumprod(s["beta_start"], s["beta_end"], s["num_train_timesteps"])
        return ac.float().to(device)

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """Guided ε; with :attr:`clip_sample` the implied ``x0 = (x - sqrt(1-ᾱ) ε) / sqrt(ᾱ)`` is clamped to
        [-1, 1] and ε recomputed from it. Why: a pixel-space ε-model's x0 error is amplified by 1/sqrt(ᾱ) at
        high noise; clipping (as in the original DDPM sampler) keeps early DDIM steps inside the data range.
        It is a fixed function of the network output, so rollout and training log-probs stay consistent."""
        eps = super().predict(x, t, cond, guidance_scale)
        if not self.clip_sample:
            return eps
        tt = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]).long()
        ab = self._alphas_cumprod(x.device)[tt].view(-1, 1, 1, 1)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    def ddim_schedule(self) -> dict:
        s = self.config.get("schedule", {})
        return dict(
            schedule=s.get("schedule", "scaled_linear"),
            beta_start=float(s.get("beta_start", 0.00085)),
            beta_end=float(s.get("beta_end", 0.012)),
            num_train_timesteps=int(s.get("num_train_timesteps", 1000)),
            steps_offset=int(s.get("steps_offset", 1)),
            final_alpha_one=False,
        )


def load_toy_model(
    name: str = "toy-flow",
    device: str | torch.device = "cpu",
    path: str | Path | None = None,
    lora: dict | None = None,
) -> ToyAdapter:
    """The shipped toy model ``name`` ("toy-flow" or "toy-ddpm") as an adapter, float32 on ``device``."""
    classes = {"toy-flow": ToyFlowAdapter, "toy-ddpm": ToyDDPMAdapter}
    if name not in classes:
        raise ValueError(f"model name: {name!r} is not a toy model; use one of {TOY_NAMES}")
    return classes[name].load(device=device, path=path, lora=lora)
