"""Implicit Reward Guidance (docs/method.md §4): steer sampling between / beyond a base and fine-tuned models.

With a reference prediction ``p̂_ref`` and fine-tuned predictions ``p̂_k``, IRG samples with

    p̂ = p̂_ref + Σ_k γ_k · (p̂_k − p̂_ref)

γ ∈ (0, 1) interpolates towards the base (less over-optimisation), γ > 1 extrapolates (stronger reward),
several fine-tuned models compose. :class:`IRGAdapter` is itself a :class:`ModelAdapter`, so every sampler
(DDIM, flow SDE/ODE) and every family works unchanged: the combination happens in ``predict``, after each
model's own classifier-free guidance, in the network's own parametrisation (ε, v or flow velocity — the
samplers' conversions are linear, so combining before or after them is the same).

The prediction is evaluated as ``(1 − Σγ)·p̂_ref + Σ γ_k·p̂_k`` (algebraically identical), which is exact
at the end points: γ = 0 returns the reference's prediction bit for bit and a single γ = 1 the fine-tuned
one. Terms with weight exactly 0 are not evaluated (no wasted forward passes).

References: for a fully fine-tuned model the reference is the base model loaded separately; for a LoRA
model it is the same adapter with LoRA disabled, :class:`ReferenceView` (``adapter.reference()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.base import Conditioning, ModelAdapter


class ReferenceView(ModelAdapter):
    """The reference (base) model of a LoRA adapter: ``predict`` runs inside ``adapter.reference()``.

    Raises ``ValueError`` at construction if the adapter has no built-in reference (full fine-tuning), so
    the caller can load the base weights separately instead.
    """

    def __init__(self, adapter: ModelAdapter):
        try:
            with adapter.reference():
                pass
        except NotImplementedError:
            raise ValueError(f"{type(adapter).__name__}: no built-in reference (not LoRA); load the base model "
                             "separately and pass it as the IRG base") from None
        self.inner = adapter
        self.prediction_type = adapter.prediction_type
        self.family = adapter.family
        self.denoiser = adapter.denoiser

    def ddim_schedule(self) -> dict:
        return self.inner.ddim_schedule()

    def encode_prompts(self, prompts):
        return self.inner.encode_prompts(prompts)

    def initial_noise(self, batch_size, generator=None):
        return self.inner.initial_noise(batch_size, generator=generator)

    def predict(self, x, t, cond, guidance_scale):
        with self.inner.reference():
            return self.inner.predict(x, t, cond, guidance_scale)

    def decode(self, x):
        return self.inner.decode(x)


class IRGAdapter(ModelAdapter):
    """``IRGAdapter(base, [(adapter_k, γ_k), ...])``: a model whose prediction is the IRG combination.

    All models must be the same family with the same prediction type (they are fine-tunes of one base).
    Conditioning, initial noise, decoding and the DDIM schedule come from ``base`` (text encoders are
    frozen in RL fine-tuning here, so the conditioning is the same for every component).
    """

    def __init__(self, base: ModelAdapter, components: Sequence[tuple[ModelAdapter, float]]):
        components = [(a, float(g)) for a, g in components]
        if not components:
            raise ValueError("IRG: give at least one (model, guidance scale) pair, e.g. --run RUN --guidance-scale 1.5")
        for a, g in components:
            if a.prediction_type != base.prediction_type:
                raise ValueError(f"IRG: model {a.family!r} predicts {a.prediction_type!r} but the base predicts "
                                 f"{base.prediction_type!r}; combine fine-tunes of the same base only")
            if not torch.isfinite(torch.tensor(g)):
                raise ValueError(f"IRG: guidance scale must be finite, got {g}")
        self.base = base
        self.components = components
        self.prediction_type = base.prediction_type
        self.family = base.family
        self.denoiser = base.denoiser

    @property
    def scales(self) -> list[float]:
        return [g for _, g in self.components]

    def ddim_schedule(self) -> dict:
        return self.base.ddim_schedule()

    def encode_prompts(self, prompts) -> Conditioning:
        return self.base.encode_prompts(prompts)

    def initial_noise(self, batch_size, generator=None):
        return self.base.initial_noise(batch_size, generator=generator)

    def decode(self, x):
        return self.base.decode(x)

    def predict(self, x, t, cond, guidance_scale):
        """``(1 − Σγ)·p̂_ref + Σ γ_k·p̂_k`` with each model's own CFG at ``guidance_scale``."""
        w_ref = 1.0 - sum(self.scales)
        out = None
        if w_ref != 0.0:
            out = w_ref * self.base.predict(x, t, cond, guidance_scale).float()
        for adapter, g in self.components:
            if g == 0.0:
                continue
            term = g * adapter.predict(x, t, cond, guidance_scale).float()
            out = term if out is None else out + term
        if out is None:  # every weight is 0 (only possible with no effective term): the reference
            out = self.base.predict(x, t, cond, guidance_scale).float()
        return out

    def to(self, device):
        self.base.to(device)
        for a, _ in self.components:
            a.to(device)
        return self
