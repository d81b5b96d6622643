"""Policy objectives and KL terms, registered by name, as pure tensor functions.

Every objective sees one flat batch of (sample, timestep) pairs:

* ``log_ratio`` [P]: the per-step log-ratio the objective acts on (native weights for the baselines,
  target weights for PCPO — the policy step builds it with :func:`pcpo.algo.logprob.log_ratio_from_terms`);
* ``advantages`` [P].

An :class:`Objective` owns its per-pair loss ``terms`` and its two masks (docs/method.md §3):

* ``flat``: pairs whose term is flat in log ρ (no gradient), comparable across objectives
  (``zero_grad_frac``);
* ``clipped``: the statistic each family logs as ``clipfrac`` — the baselines' two-sided
  ``|ρ − 1| > ξ`` for the clipped ratio, the flat side for the hinges.

Registered objectives (:data:`OBJECTIVES`):

* ``clipped`` — PPO clipped ratio (DDPO, DanceGRPO, Flow-GRPO): ``max(−A·ρ, −A·clip(ρ, 1−ξ, 1+ξ))``.
* ``log_hinge`` — PCPO-base: ``max(0, ξ·|A| − A·log ρ)``; its gradient is PPO's with ρ − 1 replaced
  by log ρ.
* ``pcpo`` — the log-hinge on the proportionate-credit surrogate (same terms; its default ``credit``
  is ``pcpo``, so the policy step feeds it the surrogate log-ratio).

KL terms (:data:`KL_TERMS`) are registered the same way and declare which credit scheme's weights
they use (``weight``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..registry import Registry

TermsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
MaskFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """A registered objective: per-pair terms, its masks, its default credit scheme."""

    name: str
    terms: TermsFn
    flat_mask: MaskFn
    clip_mask: MaskFn
    default_credit: str
    description: str

    def compute_loss(self, log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float = 1e-4,
                     step_index: torch.Tensor | None = None, num_steps: int | None = None) -> tuple[torch.Tensor, dict]:
        """``(mean of the terms, metrics)``; see :func:`objective_metrics`."""
        _check(log_ratio, advantages, clip_range)
        terms = self.terms(log_ratio, advantages, clip_range)
        clipped = self.clip_mask(log_ratio, advantages, clip_range)
        flat = self.flat_mask(log_ratio, advantages, clip_range)
        return terms.mean(), objective_metrics(log_ratio, clipped, terms, step_index, num_steps, flat)


OBJECTIVES: Registry[Objective] = Registry("objective", field="train.objective")


def register_objective(name: str, terms: TermsFn, flat_mask: MaskFn, clip_mask: MaskFn | None = None,
                       default_credit: str = "native", description: str = "") -> Objective:
    """Register an objective (``clip_mask`` defaults to ``flat_mask``)."""
    obj = Objective(name, terms, flat_mask, clip_mask or flat_mask, default_credit, description)
    OBJECTIVES.add(name, obj, default_credit=default_credit, description=description)
    return obj


def get_objective(name: str) -> Objective:
    return OBJECTIVES.get(name)


def per_step_mean(values: torch.Tensor, step_index: torch.Tensor | None, num_steps: int | None) -> list[float]:
    """Mean of ``values`` per timestep index (NaN where a step has no entries)."""
    if step_index is None or num_steps is None:
        return []
    v = values.detach().double().flatten()
    idx = step_index.detach().long().flatten().to(v.device)
    sums = torch.zeros(num_steps, dtype=torch.float64, device=v.device).index_add_(0, idx, v)
    counts = torch.zeros(num_steps, dtype=torch.float64, device=v.device).index_add_(0, idx, torch.ones_like(v))
    out = sums / counts
    return [float(x) if not math.isnan(x) else float("nan") for x in out.tolist()]


def zero_grad_mask(objective: str, log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """The flat-side mask of the registered objective ``objective`` (see :class:`Objective`)."""
    return OBJECTIVES.get(objective).flat_mask(log_ratio, advantages, clip_range)


def objective_metrics(log_ratio, clipped_mask, loss_terms, step_index=None, num_steps=None, zero_grad=None) -> dict:
    """Scalar (and, given ``step_index``, per-step) statistics of one batch of pairs."""
    lr = log_ratio.detach().double()
    clipped = clipped_mask.detach().double()
    zg = clipped if zero_grad is None else zero_grad.detach().double()
    return {
        "loss": float(loss_terms.detach().mean()),
        "clipfrac": float(clipped.mean()),
        "zero_grad_frac": float(zg.mean()),
        "abs_log_ratio": float(lr.abs().mean()),
        "approx_kl": float(0.5 * (lr**2).mean()),
        "ratio_mean": float(lr.exp().mean()),
        "clipfrac_per_step": per_step_mean(clipped, step_index, num_steps),
        "abs_log_ratio_per_step": per_step_mean(lr.abs(), step_index, num_steps),
    }


def _check(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> None:
    if log_ratio.shape != advantages.shape:
        raise ValueError(f"log_ratio {tuple(log_ratio.shape)} and advantages {tuple(advantages.shape)} differ")
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range!r}")


# ---- clipped ratio ------------------------------------------------------------------------------

def clipped_terms(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """``max(−A·ρ, −A·clip(ρ, 1−ξ, 1+ξ))`` per pair, ``ρ = exp(log_ratio)``."""
    A = advantages.to(log_ratio.dtype)
    ratio = torch.exp(log_ratio)
    return torch.maximum(-A * ratio, -A * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range))


def clipped_flat(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """``A > 0 and ρ > 1 + ξ`` or ``A < 0 and ρ < 1 − ξ`` (the clipped branch is active and flat)."""
    lr, A = log_ratio.detach(), advantages.detach().to(log_ratio.dtype)
    ratio = torch.exp(lr)
    return ((A > 0) & (ratio > 1 + clip_range)) | ((A < 0) & (ratio < 1 - clip_range))


def clipped_two_sided(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """The baselines' logged clip fraction ``|ρ − 1| > ξ`` (both sides, whatever the sign of A)."""
    return (torch.exp(log_ratio.detach()) - 1.0).abs() > clip_range


# ---- log-hinge ----------------------------------------------------------------------------------

def hinge_terms(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """``max(0, ξ·|A| − A·log ρ)`` per pair."""
    A = advantages.to(log_ratio.dtype)
    return torch.clamp(clip_range * A.abs() - A * log_ratio, min=0.0)


def hinge_flat(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """``A·log ρ ≥ ξ·|A|`` with ``A ≠ 0`` (the hinge is flat)."""
    lr, A = log_ratio.detach(), advantages.detach().to(log_ratio.dtype)
    return (A * lr >= clip_range * A.abs()) & (A != 0)


CLIPPED = register_objective("clipped", clipped_terms, clipped_flat, clipped_two_sided, "native",
                             "PPO clipped ratio (DDPO, DanceGRPO, Flow-GRPO)")
LOG_HINGE = register_objective("log_hinge", hinge_terms, hinge_flat, None, "native",
                               "PCPO-base: log-hinge max(0, ξ|A| − A·log ρ)")
PCPO = register_objective("pcpo", hinge_terms, hinge_flat, None, "pcpo",
                          "PCPO: log-hinge on the proportionate-credit surrogate")


def clipped_ratio_loss(log_ratio, advantages, clip_range: float = 1e-4, step_index=None, num_steps=None):
    """``mean(max(−A·ρ, −A·clip(ρ, 1−ξ, 1+ξ)))`` and its metrics."""
    return CLIPPED.compute_loss(log_ratio, advantages, clip_range, step_index, num_steps)


def log_hinge_loss(log_ratio, advantages, clip_range: float = 1e-4, step_index=None, num_steps=None):
    """``mean(max(0, ξ·|A| − A·log ρ))`` and its metrics."""
    return LOG_HINGE.compute_loss(log_ratio, advantages, clip_range, step_index, num_steps)


def pcpo_loss(log_ratio, advantages, clip_range: float = 1e-4, step_index=None, num_steps=None):
    """The log-hinge, fed the surrogate ``log ρ̃`` built with the target (PCPO) weights."""
    return PCPO.compute_loss(log_ratio, advantages, clip_range, step_index, num_steps)


# ---- KL to a reference model --------------------------------------------------------------------

KlFn = Callable[..., torch.Tensor]
KL_TERMS: Registry[KlFn] = Registry("kl form", field="train.kl_form")


@KL_TERMS.register("pcpo", weight="pcpo")
def kl_pcpo(sq_ref: torch.Tensor, weight: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
    """``½·w̃²·‖p̂_θ − p̂_ref‖²`` (the Gaussian KL with the surrogate weight w̃)."""
    return 0.5 * weight.to(sq_ref.dtype) ** 2 * sq_ref


@KL_TERMS.register("flow-grpo", weight="native")
def kl_flow_grpo(sq_ref: torch.Tensor, weight: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
    """``‖μ_θ − μ_ref‖²/(2g²) = ½·w²·Δt·‖Δp‖²`` (Flow-GRPO uses σ_t without sqrt(Δt)); needs ``dt``."""
    if dt is None:
        raise ValueError("kl_penalty(form='flow-grpo') needs dt")
    return 0.5 * weight.to(sq_ref.dtype) ** 2 * dt.to(sq_ref.dtype) * sq_ref


def kl_penalty(sq_ref: torch.Tensor, weight: torch.Tensor, form: str = "pcpo", dt: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample KL penalty of the registered form ``form`` (multiply by β outside).

    ``sq_ref`` = mean over elements of ``‖p̂_θ − p̂_ref‖²`` [P]; ``weight`` the step weight the form
    declares (``KL_TERMS.meta(form)["weight"]``) [P].
    """
    return KL_TERMS.get(form)(sq_ref, weight, dt)
