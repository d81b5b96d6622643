"""LoRA on a diffusers denoiser through peft, and saving it so that stock diffusers can load it.

The adapters are injected with diffusers' ``PeftAdapterMixin.add_adapter`` (peft ``LoraConfig``), so the
model keeps its class and ``disable_adapters()`` gives back the base model exactly (the reference policy
of Flow-GRPO's KL term). Saving goes through the family pipeline's own ``save_lora_weights`` with the
peft config as adapter metadata, so ``pipeline.load_lora_weights(dir)`` restores rank *and* alpha (without
the metadata diffusers would assume ``alpha = rank`` and silently change the LoRA scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

ADAPTER_NAME = "default"
LORA_INITS = ("zeros", "gaussian", "pissa", "olora", "loftq", "eva")


@dataclass
class LoraSpec:
    """What LoRA to put on the denoiser.

    rank: r of the low-rank update; alpha: scale numerator (update = alpha/r · B A); targets: module-name
    suffixes (peft ``target_modules``), ``None`` = the family's attention projections; init: ``"zeros"``
    (B = 0, so the first rollout is exactly the base model: peft's default) or ``"gaussian"`` (peft's
    other inits are passed through); dropout: LoRA dropout (keep 0 for RL: the log-ratio must be a
    deterministic function of the weights).
    """

    rank: int = 4
    alpha: float | None = None
    targets: Sequence[str] | None = None
    init: str | bool = "zeros"
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict | None) -> LoraSpec | None:
        """``None``/``False`` → no LoRA; a dict with keys rank, alpha, targets, init, dropout."""
        if cfg is None or cfg is False:
            return None
        if cfg is True:
            return cls()
        if not isinstance(cfg, dict):
            raise ValueError(f"model.lora must be a mapping like {{rank: 32, alpha: 64}} or null, got {cfg!r}")
        known = {"rank", "r", "alpha", "lora_alpha", "targets", "target_modules", "init", "dropout", "extra"}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"model.lora: unknown keys {sorted(unknown)}; use rank, alpha, targets, init, dropout")
        rank = int(cfg.get("rank", cfg.get("r", 4)))
        if rank <= 0:
            raise ValueError(f"model.lora.rank must be a positive integer, got {rank}")
        alpha = cfg.get("alpha", cfg.get("lora_alpha"))
        targets = cfg.get("targets", cfg.get("target_modules"))
        if isinstance(targets, str):
            targets = [targets]
        init = cfg.get("init", "zeros")
        if init not in LORA_INITS and not isinstance(init, bool):
            raise ValueError(f"model.lora.init must be one of {LORA_INITS}, got {init!r}")
        return cls(rank=rank, alpha=None if alpha is None else float(alpha), targets=targets, init=init,
                   dropout=float(cfg.get("dropout", 0.0)), extra=dict(cfg.get("extra", {})))

    def peft_config(self, default_targets: Sequence[str]):
        from peft import LoraConfig

        init = {"zeros": True, "gaussian": "gaussian"}.get(self.init, self.init) if isinstance(self.init, str) else self.init
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            target_modules=list(self.targets or default_targets),
            init_lora_weights=init,
            lora_dropout=self.dropout,
            **self.extra,
        )


def add_lora(denoiser: nn.Module, spec: LoraSpec, default_targets: Sequence[str], upcast: bool = True) -> None:
    """Freeze ``denoiser`` and inject LoRA layers; LoRA weights are made fp32 when ``upcast`` (mixed precision:
    bf16/fp16 base weights, fp32 trainable weights, as the diffusers training scripts do)."""
    denoiser.requires_grad_(False)
    try:
        denoiser.add_adapter(spec.peft_config(default_targets), adapter_name=ADAPTER_NAME)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        msg = str(e).splitlines()[0]
        raise ValueError(f"model.lora.targets: {msg}; name module suffixes such as to_q, to_k, to_v, to_out.0") from None
    n = 0
    for name, p in denoiser.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            if upcast and p.dtype != torch.float32:
                p.data = p.data.float()
            n += p.numel()
    if n == 0:
        raise ValueError("model.lora.targets matched no layer of the denoiser")


def lora_state_dict(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights in peft's naming (``...lora_A.weight``, no adapter name), detached copies."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME).items()}


def load_lora_state_dict(denoiser: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"unexpected keys in LoRA weights: {sorted(unexpected)[:5]}")


def lora_metadata(denoiser: nn.Module) -> dict:
    """The peft config of the adapter as a plain dict (saved beside the weights by diffusers)."""
    cfg = denoiser.peft_config[ADAPTER_NAME].to_dict()
    for k, v in list(cfg.items()):
        if isinstance(v, set):
            cfg[k] = sorted(v)
    return cfg


def save_lora_for_pipeline(pipeline_cls, denoiser_kind: str, denoiser: nn.Module, directory: str,
                           convert_to_diffusers: bool) -> None:
    """Save LoRA weights with ``pipeline_cls.save_lora_weights`` (loadable by ``load_lora_weights``).

    denoiser_kind: ``"unet"`` (SD, SDXL: keys converted with ``convert_state_dict_to_diffusers``, as in
    diffusers' ``train_text_to_image_lora*.py``) or ``"transformer"`` (SD3, FLUX: peft keys as is, as in
    ``train_dreambooth_lora_sd3.py`` / ``_flux.py``).
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)
    if convert_to_diffusers:
        state = convert_state_dict_to_diffusers(state)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    kwargs = {
        f"{denoiser_kind}_lora_layers": state,
        f"{denoiser_kind}_lora_adapter_metadata": lora_metadata(denoiser),
    }
    pipeline_cls.save_lora_weights(directory, safe_serialization=True, **kwargs)
