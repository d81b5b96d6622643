"""Per-step log-densities and log-ratios (docs/method.md §2).

Two ways to get ``log ρ_t = log p_θ(x_next | x_t) − log p_old(x_next | x_t)``:

* :func:`log_ratio_decomposed`, exact and cancellation-free: with the stored rollout noise ``z_old`` and
  prediction ``p̂_old``, and ``Δp = p̂_θ − p̂_old``,
  ``log ρ = −[ w·⟨Δp, z_old⟩ + ½·w²·‖Δp‖² ]`` where ``w = c/s`` is the step weight.
* :func:`gaussian_log_prob` differences, as the baselines compute it (two large, nearly equal numbers).

Both reduce over latent elements with a **mean** (as every baseline does, so a clip range of ~1e-4
means the same here as there), and both compute in at least float32 whatever the model's dtype.
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _mean_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Mean over non-batch elements of ``log N(x; mean, std²)``; shape [B]. ``std`` > 0 (scalar or [B])."""
    dt = _compute_dtype(x, mean, std if isinstance(std, torch.Tensor) else x)
    x, mean = x.to(dt), mean.to(dt)
    std = torch.as_tensor(std, dtype=dt, device=x.device)
    if std.ndim == 1:
        std = std.view(-1, *([1] * (x.ndim - 1)))
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return _mean_except_batch(lp)


def ratio_terms(pred: torch.Tensor, pred_old: torch.Tensor, noise_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(⟨Δp, z⟩, ‖Δp‖²)`` as means over elements, shape [B] each, in at least float32.

    Every log-ratio in pcpo (native, surrogate, linear-only) is a function of these two numbers and a
    step weight, so the trainer computes them once per forward.
    """
    dt = _compute_dtype(pred, pred_old, noise_old)
    delta = pred.to(dt) - pred_old.to(dt)
    return _mean_except_batch(delta * noise_old.to(dt)), _mean_except_batch(delta**2)


def log_ratio_from_terms(
    lin: torch.Tensor, sq: torch.Tensor, weight: torch.Tensor | float, quadratic: bool = True
) -> torch.Tensor:
    """``−[w·lin + ½·w²·sq]`` (``quadratic=False``: the linear term only)."""
    w = torch.as_tensor(weight, dtype=lin.dtype, device=lin.device)
    out = -w * lin
    if quadratic:
        out = out - 0.5 * w**2 * sq
    return out


def log_ratio_decomposed(
    pred: torch.Tensor,
    pred_old: torch.Tensor,
    noise_old: torch.Tensor,
    weight: torch.Tensor | float,
    quadratic: bool = True,
) -> torch.Tensor:
    """Exact per-sample log-ratio of one Gaussian step (mean-reduced), shape [B].

    ``weight`` is the step weight ``c/s`` (scalar or [B]); for the PCPO surrogate pass the target
    weight instead.
    """
    lin, sq = ratio_terms(pred, pred_old, noise_old)
    return log_ratio_from_terms(lin, sq, weight, quadratic)


def log_ratio_gaussian(
    x_next: torch.Tensor, mean: torch.Tensor, mean_old: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """The baselines' log-ratio: difference of two mean-reduced Gaussian log-densities."""
    return gaussian_log_prob(x_next, mean, std) - gaussian_log_prob(x_next, mean_old, std)
