"""The model-adapter interface: everything the trainer, the evaluator and ``pcpo sample`` know of a model.

One adapter wraps one model family (the embedded toy models, SD1.x/2.x, SDXL, SD3.x, FLUX.1). The
trainer cannot tell them apart: it asks for conditioning, initial noise, a guided prediction at a
state and time, and a decode to images. Everything family-specific (latent packing, text encoders,
added time ids, guidance embeddings, VAE scaling) stays inside the adapter.

Conventions
-----------
* ``Conditioning`` is a ``dict[str, Tensor]`` whose tensors are all batch-first with the same batch
  size (one row per image). It carries the unconditional embeddings too (one copy per row), so
  indexing rows with :func:`cond_select` keeps everything aligned.
* Times are the sampler's own: integer training timesteps for DDIM, ``t`` in ``[0, 1]`` (1 = noise)
  for flow samplers. The adapter converts to whatever its network expects.
* ``predict`` returns the prediction in the network's own parametrisation (ε, v or flow velocity)
  after classifier-free guidance; the sampler converts to its canonical form.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

Conditioning = dict[str, torch.Tensor]


def cond_select(cond: Conditioning, index: torch.Tensor | slice | Sequence[int]) -> Conditioning:
    """Rows ``index`` of every tensor in ``cond`` (a tensor index goes to each tensor's device; an empty
    conditioning stays empty)."""
    if not isinstance(index, (torch.Tensor, slice)):
        index = torch.as_tensor(list(index), dtype=torch.long)
    if isinstance(index, torch.Tensor):
        return {k: v[index.to(v.device)] for k, v in cond.items()}
    return {k: v[index] for k, v in cond.items()}


def cond_cat(conds: Sequence[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch dimension."""
    if not conds:
        raise ValueError("cond_cat: need at least one conditioning")
    keys = conds[0].keys()
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in keys}


def cond_to(cond: Conditioning, device: torch.device | str) -> Conditioning:
    return {k: v.to(device) for k, v in cond.items()}


class ModelAdapter(ABC):
    """A text-to-image model as the RL loop sees it.

    Attributes every adapter sets:
      prediction_type: ``"epsilon"``, ``"v_prediction"`` (diffusion, DDIM sampler) or ``"flow"``
        (velocity of rectified flow, flow-SDE samplers).
      family: a short name (``"toy-flow"``, ``"toy-ddpm"``, ``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``).
      denoiser: the ``nn.Module`` that is trained (UNet or transformer, possibly with LoRA layers).
    """

    prediction_type: str
    family: str
    denoiser: nn.Module

    # ---- schedule -------------------------------------------------------------------------
    def ddim_schedule(self) -> dict:
        """For diffusion models: kwargs for :class:`pcpo.samplers.DDIMSampler` describing the training
        schedule (``betas`` or ``schedule``, ``num_train_timesteps``, ``steps_offset``,
        ``final_alpha_one``). Flow models raise."""
        raise NotImplementedError(f"{type(self).__name__} is not a diffusion (DDIM) model")

    # ---- data flow ------------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for ``prompts`` (no grad), including unconditional embeddings for CFG."""

    @abstractmethod
    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) in the model's state space (latents or pixels), float32, on the adapter's device."""

    @abstractmethod
    def predict(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """Guided prediction at state ``x`` and sampler time ``t`` (shape [B]).

        With ``guidance_scale > 1`` (and a model that uses real CFG) the conditional and unconditional
        branches run in one batched forward: ``p = p_u + s (p_c - p_u)``. Gradients flow through both
        branches unless the adapter is told otherwise. Returns float32 of ``x``'s shape.
        """

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final state to images, float32 in [0, 1], shape [B, 3, H, W]."""

    # ---- training -------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.denoiser.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device: torch.device | str) -> ModelAdapter:
        self.denoiser.to(device)
        return self

    # LoRA: adapters that attach one (pcpo.models.lora.add_lora) set ``lora_spec``; everything below then
    # treats the LoRA weights as the trained part and the LoRA-off model as the reference.
    lora_spec = None

    @property
    def uses_lora(self) -> bool:
        return self.lora_spec is not None

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Context in which ``predict`` gives the reference (base) model: LoRA adapters disabled.

        Adapters without LoRA raise ``NotImplementedError``; the trainer then keeps a frozen copy instead.
        """
        if not self.uses_lora:
            raise NotImplementedError(f"{type(self).__name__}: no built-in reference (LoRA is off)")
        self.denoiser.disable_adapters()
        try:
            yield
        finally:
            self.denoiser.enable_adapters()

    def fsdp_units(self) -> list[nn.Module]:
        """The denoiser's sub-modules FSDP shards as separate units before the root (so that only one
        block's parameters are gathered at a time): every element of the outermost ``nn.ModuleList``
        attributes whose names end in ``blocks`` (``transformer_blocks``, FLUX's
        ``single_transformer_blocks``, the UNets' ``down_blocks`` / ``up_blocks``). Empty for models
        without such lists (the root is then the only unit)."""
        units, lists = [], []
        for name, m in self.denoiser.named_modules():
            if not isinstance(m, nn.ModuleList) or not name.split(".")[-1].endswith("blocks"):
                continue
            if any(name.startswith(outer + ".") for outer in lists):
                continue
            lists.append(name)
            units.extend(m)
        return units

    def has_reference(self) -> bool:
        """Whether :meth:`reference` works (else a separate reference model is needed)."""
        try:
            with self.reference():
                return True
        except NotImplementedError:
            return False

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must store for the trained part (LoRA weights or the full denoiser)."""
        if self.uses_lora:
            from .lora import lora_state_dict

            return lora_state_dict(self.denoiser)
        return {k: v.detach().clone() for k, v in self.denoiser.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.uses_lora:
            from .lora import load_lora_state_dict

            load_lora_state_dict(self.denoiser, state)
            return
        missing, unexpected = self.denoiser.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"unexpected keys in trained weights: {sorted(unexpected)[:5]}")

    def parameters_for_ddp(self) -> Iterable[nn.Module]:
        return [self.denoiser]
