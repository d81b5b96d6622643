"""Timestep credit schemes: a scheme maps a sampler's schedule to one weight per step.

The weight of step i scales that step's policy gradient (it multiplies Δp in the log-ratio,
docs/method.md §2–3).

* ``native``: the sampler's own ``c/s`` (what DDPO, DanceGRPO and Flow-GRPO train with).
* ``pcpo``: credit proportional to the step's share of the trajectory,
  ``w̃_i = ζ·Δt_i / Σ_j Δt_j`` with ``ζ = Σ_j w_j`` (credit preserving). For evenly spaced DDIM
  this is the constant ``w* = mean(w_j)``. ``w_star`` overrides the mean weight: ``w̃_i = w*·Δt_i/mean(Δt)``.
* ``uniform``: every step gets ``mean(w_j)`` regardless of Δt (an ablation).

Register more with :data:`CREDIT` (``@CREDIT.register(name, options=(...))``); ``options`` names the
run-config fields (``train.<option>``) a scheme takes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..registry import Registry
from ..samplers.base import Sampler

CreditFn = Callable[..., torch.Tensor]
CREDIT: Registry[CreditFn] = Registry("credit scheme", field="train.credit")


def available_credit() -> list[str]:
    return sorted(CREDIT.names())


def _require_stochastic(sampler: Sampler, scheme: str) -> torch.Tensor:
    """Nominal weights; deterministic steps (s = 0, no log-density, never trained) are left as ``inf``."""
    w = sampler.nominal_weights()
    if not bool(sampler.stochastic.any()):
        raise ValueError(
            f"credit {scheme!r}: every step of the sampler is deterministic (eta = 0), so none has a "
            "log-density; use eta > 0 for training"
        )
    return w


@CREDIT.register("native", options=())
def native_credit(sampler: Sampler) -> torch.Tensor:
    """The sampler's own step weights ``c/s`` (float64 [N]; ``inf`` at deterministic steps)."""
    _require_stochastic(sampler, "native")
    return sampler.native_weights()


@CREDIT.register("pcpo", options=("w_star",))
def pcpo_credit(sampler: Sampler, w_star: float | None = None) -> torch.Tensor:
    """Proportionate credit ``ζ·Δt_i/ΣΔt`` (float64 [N]); ``w_star`` > 0 fixes the mean weight.

    Sums run over the stochastic steps; deterministic steps (never trained) get weight 0.
    """
    w = _require_stochastic(sampler, "pcpo")
    mask = sampler.stochastic
    dt = torch.where(mask, sampler.dt(), torch.zeros_like(w))
    if w_star is not None:
        w_star = float(w_star)
        if not w_star > 0:
            raise ValueError(f"w_star must be > 0, got {w_star!r}")
        zeta = w_star * int(mask.sum())
    else:
        zeta = float(w[mask].sum())
    return zeta * dt / dt.sum()


@CREDIT.register("uniform", options=())
def uniform_credit(sampler: Sampler) -> torch.Tensor:
    """Every step weighted by the mean native weight (ignores Δt)."""
    w = _require_stochastic(sampler, "uniform")
    mask = sampler.stochastic
    return torch.where(mask, float(w[mask].mean()), 0.0).to(w.dtype)


def credit_weights(name: str, sampler: Sampler, **kwargs) -> torch.Tensor:
    """Weights of the credit scheme ``name`` for ``sampler``."""
    return CREDIT.get(name)(sampler, **kwargs)


def credit_options(name: str, values: dict) -> dict:
    """The options scheme ``name`` declares, taken from ``values`` (unset = None are left out)."""
    return {k: values[k] for k in CREDIT.meta(name)["options"] if values.get(k) is not None}


def credit_table(sampler: Sampler, w_star: float | None = None, loss_weights: torch.Tensor | None = None,
                 trained: list[int] | None = None, step_index: bool = False) -> dict:
    """``{"zeta": ..., "steps": [{"t", "dt", "native", "pcpo"}, ...]}`` for ``pcpo credit``: the stochastic
    steps of ``sampler`` (for a windowed sampler, the window's: both schemes are computed over them).

    With ``loss_weights`` (a per-step loss weight λ [N], e.g. from :data:`pcpo.algo.step.LOSS_WEIGHTS`)
    each step also gets ``"loss_weight"``; with ``trained`` (the window's trained steps) ``"trained"``;
    with either (or ``step_index``), ``"step"`` (the step's index in the sampler)."""
    native = native_credit(sampler)
    target = pcpo_credit(sampler, w_star=w_star)
    dt = sampler.dt()
    extra = step_index or loss_weights is not None or trained is not None
    steps = []
    for i, (t, d, n, p) in enumerate(zip(sampler.timesteps.tolist(), dt.tolist(), native.tolist(), target.tolist())):
        if n == float("inf"):
            continue
        row = {"t": float(t), "dt": float(d), "native": float(n), "pcpo": float(p)}
        if extra:
            row["step"] = i
        if loss_weights is not None:
            row["loss_weight"] = float(loss_weights[i])
        if trained is not None:
            row["trained"] = i in set(trained)
        steps.append(row)
    return {"zeta": float(target.sum()), "sampler": sampler.describe(), "steps": steps}
