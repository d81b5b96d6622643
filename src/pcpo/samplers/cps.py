"""Coefficients-preserving sampling (CPS), Flow-GRPO's ``sde_type="cps"`` (arXiv 2509.05952).

From x at t to t' < t, with the model's data and noise estimates ``x̂_0 = x − t·v̂`` and
``x̂_1 = x + (1 − t)·v̂``, CPS keeps the coefficients of x_0 and of the total noise at their marginal
values (1 − t' and t')::

    x' = (1 − t')·x̂_0 + sqrt(t'² − s²)·x̂_1 + s·z,      s = t'·sin(η·π/2)

so the step is affine in the velocity with ``β = sqrt(t'² − s²)``::

    a = (1 − t') + β,      c = t·(1 − t') − (1 − t)·β,      s = t'·sin(η·π/2)

(c ≥ t − t' > 0). η = 0 (or a step outside ``sde_steps``) gives s = 0, β = t', a = 1, c = t − t': the
Euler ODE step. The last step (t' = 0) is always deterministic. Flow-GRPO's CPS configs use η = 0.8.

**Log-density.** pcpo's log-ratio of a CPS step is the exact Gaussian one,
``−[w·⟨Δp, z⟩ + ½·w²·‖Δp‖²]`` with ``w = c/s`` (docs/method.md §2). Flow-GRPO's CPS log-prob drops
every constant *and* the variance: ``−mean((x' − μ)²)``, so its log-ratio is ``2·s²`` times the Gaussian
one (it equals ``−[2·s·c·⟨Δp, z⟩ + c²·‖Δp‖²]``). The ratio transform ``flow_grpo_cps``
(:mod:`pcpo.algo.peers`) reproduces Flow-GRPO's scaling when a run wants its clip range to mean the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Sampler
from .flow import resolve_grid, sde_step_mask


class CPSSampler(Sampler):
    """N-step coefficients-preserving sampler on a flow-matching grid.

    Args:
        num_steps: N (> 0).  eta: noise level η in [0, 1] (Flow-GRPO's ``noise_level``; 0 = Euler ODE).
        shift / grid / scheduler_config / image_seq_len: the time grid, as for
            :class:`pcpo.samplers.flow.FlowSampler` (``"linspace"``, ``"pipeline"`` or explicit times).
        sde_steps: the steps that draw noise (None = all); the others are Euler ODE steps.
    """

    kind = "cps"

    def __init__(self, num_steps: int = 10, eta: float = 0.8, shift: float = 1.0,
                 grid: torch.Tensor | str | None = None, *, scheduler_config: dict | None = None,
                 image_seq_len: int | None = None, sde_steps: Sequence[int] | None = None):
        eta = float(eta)
        if not 0 <= eta <= 1:
            raise ValueError(f"eta (CPS noise level) must be in [0, 1], got {eta!r}")
        self.eta = eta
        self.shift = float(shift)
        self.grid_type = grid if isinstance(grid, str) else ("linspace" if grid is None else "explicit")
        self.scheduler_config = dict(scheduler_config) if scheduler_config is not None else None
        self.image_seq_len = image_seq_len
        self.grid = resolve_grid(num_steps, shift, grid, scheduler_config, image_seq_len)
        self.num_steps = num_steps
        self.sde_mask = sde_step_mask(num_steps, sde_steps)
        t, tn = self.grid[:-1], self.grid[1:]
        self.timesteps = t.clone()
        self._dt = t - tn
        s = torch.where(self.sde_mask, tn * math.sin(eta * math.pi / 2), torch.zeros_like(tn))
        beta = (tn**2 - s**2).clamp(min=0).sqrt()
        self._a = (1 - tn) + beta
        self._c = t * (1 - tn) - (1 - t) * beta
        self._s = s

    def data_prediction(self, i: int, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x̂_0 = x − t_i·v̂."""
        self._check_index(i)
        return x - float(self.grid[i]) * pred

    def describe(self) -> dict:
        d = {"kind": self.kind, "num_steps": self.num_steps, "eta": self.eta, "shift": self.shift,
             "grid": self.grid_type}
        if not bool(self.sde_mask.all()):
            d["sde_steps"] = [int(i) for i in torch.nonzero(self.sde_mask).flatten()]
        return d

    def _grid_spec(self):
        return self.grid if self.grid_type == "explicit" else self.grid_type

    def with_window(self, sde_steps: Sequence[int] | None) -> CPSSampler:
        """The same sampler with noise only on ``sde_steps``."""
        return CPSSampler(self.num_steps, eta=self.eta, shift=self.shift, grid=self._grid_spec(),
                          scheduler_config=self.scheduler_config, image_seq_len=self.image_seq_len,
                          sde_steps=sde_steps)

    def deterministic(self, steps: int | None = None) -> CPSSampler:
        """The Euler ODE (η = 0) on this grid, or on a new grid of ``steps`` of the same kind."""
        if steps is None or steps == self.num_steps:
            return CPSSampler(self.num_steps, eta=0.0, shift=self.shift, grid=self.grid)
        grid = "pipeline" if self.grid_type == "pipeline" else "linspace"
        return CPSSampler(steps, eta=0.0, shift=self.shift, grid=grid, scheduler_config=self.scheduler_config,
                          image_seq_len=self.image_seq_len)
