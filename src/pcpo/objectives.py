"""Policy objectives as pure tensor functions returning ``(loss, metrics)``.

Every objective sees one flat batch of (sample, timestep) pairs:

* ``log_ratio`` [B]: the per-step log-ratio the objective acts on (native weights for the baselines,
  target weights for PCPO — the trainer builds it with :func:`pcpo.logprob.log_ratio_from_terms`);
* ``advantages`` [B];
* ``step_index`` [B] (optional) and ``num_steps``: for per-timestep metrics.

Registered objectives (``OBJECTIVES``):

* ``clipped`` — PPO clipped ratio (DDPO, DanceGRPO, Flow-GRPO):
  ``max(−A·ρ, −A·clip(ρ, 1−ξ, 1+ξ))``.
* ``log_hinge`` — PCPO-base: ``max(0, ξ·|A| − A·log ρ)``; its gradient is PPO's with ρ − 1 replaced
  by log ρ.
* ``pcpo`` — the log-hinge on the proportionate-credit surrogate (same formula; the objective's
  ``credit`` is ``pcpo``, so the trainer feeds the surrogate log-ratio).

Each ``Objective`` declares the credit scheme it uses by default; configs may override it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LossFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Objective:
    name: str
    compute_loss: LossFn
    default_credit: str
    description: str


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, default_credit: str, description: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        OBJECTIVES[name] = Objective(name, fn, default_credit, description)
        return fn

    return deco


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


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
    """Pairs whose loss term is flat in log ρ (no gradient): comparable across objectives.

    PPO clipped ratio: ``A > 0 and ρ > 1 + ξ`` or ``A < 0 and ρ < 1 − ξ``; log-hinge and PCPO:
    ``A·log ρ ≥ ξ·|A|``. Pairs with ``A = 0`` are never counted.
    """
    lr, A = log_ratio.detach(), advantages.detach().to(log_ratio.dtype)
    if objective == "clipped":
        ratio = torch.exp(lr)
        return ((A > 0) & (ratio > 1 + clip_range)) | ((A < 0) & (ratio < 1 - clip_range))
    return (A * lr >= clip_range * A.abs()) & (A != 0)


def _metrics(log_ratio, clipped_mask, loss_terms, step_index, num_steps, zero_grad=None) -> dict:
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


@register_objective("clipped", "native", "PPO clipped ratio (DDPO, DanceGRPO, Flow-GRPO)")
def clipped_ratio_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    step_index: torch.Tensor | None = None,
    num_steps: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """``mean(max(−A·ρ, −A·clip(ρ, 1−ξ, 1+ξ)))`` with ``ρ = exp(log_ratio)``."""
    _check(log_ratio, advantages, clip_range)
    A = advantages.to(log_ratio.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -A * ratio
    clipped = -A * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    terms = torch.maximum(unclipped, clipped)
    mask = (ratio - 1.0).abs() > clip_range  # the baselines' logged clipfrac (both sides)
    zg = zero_grad_mask("clipped", log_ratio, advantages, clip_range)
    return terms.mean(), _metrics(log_ratio, mask, terms, step_index, num_steps, zg)


def _hinge(log_ratio, advantages, clip_range, step_index, num_steps):
    _check(log_ratio, advantages, clip_range)
    A = advantages.to(log_ratio.dtype)
    terms = torch.clamp(clip_range * A.abs() - A * log_ratio, min=0.0)
    # "clipped" = the hinge is flat (no gradient), the analogue of PPO's clipped region.
    mask = zero_grad_mask("log_hinge", log_ratio, advantages, clip_range)
    return terms.mean(), _metrics(log_ratio, mask, terms, step_index, num_steps)


@register_objective("log_hinge", "native", "PCPO-base: log-hinge max(0, ξ|A| − A·log ρ)")
def log_hinge_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    step_index: torch.Tensor | None = None,
    num_steps: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """``mean(max(0, ξ·|A| − A·log ρ))``."""
    return _hinge(log_ratio, advantages, clip_range, step_index, num_steps)


@register_objective("pcpo", "pcpo", "PCPO: log-hinge on the proportionate-credit surrogate")
def pcpo_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    step_index: torch.Tensor | None = None,
    num_steps: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """The log-hinge, fed the surrogate ``log ρ̃`` built with the target (PCPO) weights."""
    return _hinge(log_ratio, advantages, clip_range, step_index, num_steps)


# ---- KL to a reference model ------------------------------------------------------------------

KL_FORMS = ("pcpo", "flow-grpo")


def kl_penalty(sq_ref: torch.Tensor, weight: torch.Tensor, form: str = "pcpo", dt: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample KL penalty to a reference (multiply by β outside).

    ``sq_ref`` = mean over elements of ``‖p̂_θ − p̂_ref‖²`` [B]; ``weight`` the step weight [B].

    * ``pcpo``: ``½·w̃²·sq_ref`` (the Gaussian KL with the surrogate weight).
    * ``flow-grpo``: ``‖μ_θ − μ_ref‖²/(2g²) = ½·w²·Δt·sq_ref`` (exact Gaussian KL × Δt, as Flow-GRPO
      uses σ_t without sqrt(Δt)); needs ``dt`` [B] and the native ``weight``.
    """
    w = weight.to(sq_ref.dtype)
    if form == "pcpo":
        return 0.5 * w**2 * sq_ref
    if form == "flow-grpo":
        if dt is None:
            raise ValueError("kl_penalty(form='flow-grpo') needs dt")
        return 0.5 * w**2 * dt.to(sq_ref.dtype) * sq_ref
    raise ValueError(f"kl form must be one of {KL_FORMS}, got {form!r}")
