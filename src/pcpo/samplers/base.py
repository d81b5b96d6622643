"""Common sampler machinery.

Every sampler in pcpo is a Gaussian Markov chain whose step is affine in the network's (canonical)
prediction ``p``::

    x_next = a_i · x_i − c_i · p + s_i · z,      z ~ N(0, I)

with per-step scalars ``a_i``, ``c_i`` (> 0) and ``s_i`` (>= 0) that depend only on the schedule
(docs/method.md §1). A step is a pure function of (step index, state, prediction, noise), like a diffusers
scheduler step, but without hidden mutable state: the same call always gives the same answer.

The step's *native weight* ``w_i = c_i / s_i`` is what scales that step's policy gradient in the
baselines (docs/method.md §2); credit schemes (``pcpo.algo.credit``) replace it.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass

import torch


@dataclass
class StepOutput:
    """Result of one sampler step.

    prev_sample: the next state ``x_next`` (float32, or float64 for float64 inputs).
    mean: ``a·x − c·p``, the mean of the Gaussian transition (same dtype).
    std: the transition's standard deviation ``s_i`` (0-d float32 tensor; 0 for deterministic steps).
    noise: the standard-normal draw ``z`` used (zeros for deterministic steps).
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    noise: torch.Tensor


class Sampler(ABC):
    """A fixed N-step schedule plus the step physics.

    Subclasses fill ``_a, _c, _s`` (float64 tensors of length N), ``_dt`` (the step's share of the
    trajectory, float64, > 0) and ``timesteps`` (what the model receives as time, via the adapter).
    """

    kind: str = "base"
    num_steps: int
    timesteps: torch.Tensor
    _a: torch.Tensor
    _c: torch.Tensor
    _s: torch.Tensor
    _dt: torch.Tensor

    # ---- schedule queries -------------------------------------------------------------------
    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, c, s), each float64 of shape [N]."""
        return self._a.clone(), self._c.clone(), self._s.clone()

    def dt(self) -> torch.Tensor:
        """Each step's share of the trajectory (float64 [N], positive)."""
        return self._dt.clone()

    @property
    def stochastic(self) -> torch.Tensor:
        """Bool [N]: which steps draw noise (s_i > 0) and so have a log-density."""
        return self._s > 0

    def native_weights(self) -> torch.Tensor:
        """w_i = c_i / s_i (float64 [N]); ``inf`` at deterministic steps."""
        w = torch.full_like(self._c, float("inf"))
        mask = self._s > 0
        w[mask] = self._c[mask] / self._s[mask]
        return w

    def nominal_weights(self) -> torch.Tensor:
        """Native weights as the credit budget counts them (docs/method.md §5).

        Equal to :meth:`native_weights` except where a sampler's formula is undefined and the sampler
        patches it (Flow-GRPO's t = 1 step): there the budget uses the next step's weight.
        """
        return self.native_weights()

    def describe(self) -> dict:
        """A JSON-friendly summary (kind, steps, parameters)."""
        return {"kind": self.kind, "num_steps": self.num_steps}

    def deterministic(self, steps: int | None = None) -> Sampler:
        """The deterministic counterpart (flow ODE / DDIM η = 0) used for evaluation, with ``steps``
        steps (None = the same N and grid)."""
        raise NotImplementedError(f"{type(self).__name__} has no deterministic counterpart")

    #: how the model is given the time: ``"exact"`` or ``"floor1000"`` (floor(1000·t)/1000, DanceGRPO's
    #: FLUX script); the step physics always use the exact time.
    time_input: str = "exact"

    def input_times(self, step_index: torch.Tensor) -> torch.Tensor:
        """The time the model receives at each of ``step_index`` (long [B]); see :attr:`time_input`."""
        t = self.timesteps[step_index.cpu().long()]
        if self.time_input == "floor1000":
            t = torch.floor(t * 1000) / 1000
        elif self.time_input != "exact":
            raise ValueError(f"time_input must be exact or floor1000, got {self.time_input!r}")
        return t

    def model_time(self, i: int, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The time the model receives at step ``i``, repeated for a batch (what ``ModelAdapter.predict`` takes)."""
        t = self.input_times(torch.tensor([i]))[0]
        return t.expand(batch_size).to(device) if device is not None else t.expand(batch_size)

    def inherit(self, other: Sampler) -> Sampler:
        """Copy ``other``'s model-input convention onto this sampler (after deterministic/with_window)."""
        self.time_input = other.time_input
        return self

    # ---- the step ---------------------------------------------------------------------------
    def canonical(self, i: int | torch.Tensor, x: torch.Tensor, raw_pred: torch.Tensor) -> torch.Tensor:
        """The network output in the sampler's canonical parametrisation (identity by default).

        ``i`` is a step index or a tensor [B] of per-row step indices."""
        return raw_pred

    def mean(self, i: int, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Transition mean ``a_i x − c_i p`` in float32 (``pred`` canonical)."""
        self._check_index(i)
        a, c = float(self._a[i]), float(self._c[i])
        dtype = torch.promote_types(torch.promote_types(x.dtype, pred.dtype), torch.float32)
        return a * x.to(dtype) - c * pred.to(dtype)

    def step(
        self,
        i: int,
        x: torch.Tensor,
        pred: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One step from ``x`` with canonical prediction ``pred``.

        ``noise`` (standard normal, shape of ``x``) is drawn from ``generator`` when not given, and is
        returned so that the log-ratio can be evaluated exactly later (docs/method.md §2).
        """
        if x.shape != pred.shape:
            raise ValueError(f"step: x has shape {tuple(x.shape)} but pred has {tuple(pred.shape)}")
        mean = self.mean(i, x, pred)
        s = float(self._s[i])
        if s > 0:
            if noise is None:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            prev = mean + s * noise.to(mean.dtype)
        else:
            noise = torch.zeros_like(mean)
            prev = mean
        return StepOutput(prev_sample=prev, mean=mean, std=torch.tensor(s, dtype=torch.float32), noise=noise)

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step index {i} out of range for a {self.num_steps}-step sampler")

    def __len__(self) -> int:
        return self.num_steps


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0 or value != value:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value
