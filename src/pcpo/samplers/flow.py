"""Flow-matching SDE samplers (DanceGRPO, Flow-GRPO; SD3.x, FLUX.1).

Rectified flow ``x_t = (1 − t)·x_0 + t·noise``, velocity ``v = noise − x_0``, t = 1 is pure noise.
One Euler–Maruyama step of the marginal-preserving reverse SDE with diffusion coefficient g, from
t_i to t_{i+1} < t_i, Δt = t_i − t_{i+1} (method.md §1.2)::

    x_next = x − Δt · [ v̂ + g²/(2t) · (x + (1 − t)·v̂) ] + g · sqrt(Δt) · z

so ``a = 1 − Δt·g²/(2t)``, ``c = Δt·(1 + (1 − t)·g²/(2t))``, ``s = g·sqrt(Δt)``.

* ``noise="dance"`` (DanceGRPO): g ≡ η.
* ``noise="flow-grpo"`` (Flow-GRPO): g = η·sqrt(t/(1 − t)), with (1 − t) at t = 1 replaced by
  (1 − t_1) (the next grid point), as Flow-GRPO does to avoid dividing by zero.
* η = 0 gives the deterministic Euler ODE ``x_next = x − Δt·v̂`` (evaluation).

The grid is ``linspace(1, 0, N + 1)`` shifted by ``t ← s·t / (1 + (s − 1)·t)`` (s = 3 for SD3.5/FLUX),
or an explicit ``grid``.
"""

from __future__ import annotations

import torch

from .base import Sampler, check_nonnegative, check_positive, check_positive_int

NOISE_TYPES = ("dance", "flow-grpo")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift ``s·t / (1 + (s − 1)·t)`` (s > 0; s = 1 is the identity)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``linspace(1, 0, N + 1)`` shifted, float64, descending from 1 to 0."""
    check_positive_int("steps", num_steps)
    check_positive("shift", shift)
    return shift_time(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


class FlowSampler(Sampler):
    """N-step flow-matching SDE (or ODE at η = 0).

    Args:
        num_steps: number of steps N (> 0).
        eta: noise level: DanceGRPO's constant g = η (0.3 for FLUX) or Flow-GRPO's a (0.7); 0 = ODE.
        noise: ``"dance"`` (g = η) or ``"flow-grpo"`` (g = η·sqrt(t/(1 − t))).
        shift: timestep shift s > 0 (1 = none; 3 for SD3.5/FLUX).
        grid: explicit descending grid of N + 1 times from 1 to 0 (overrides ``shift``).
    """

    kind = "flow"

    def __init__(
        self,
        num_steps: int = 10,
        eta: float = 0.7,
        noise: str = "flow-grpo",
        shift: float = 1.0,
        grid: torch.Tensor | None = None,
    ):
        self.num_steps = check_positive_int("steps", num_steps)
        self.eta = check_nonnegative("eta", eta)
        self.shift = check_positive("shift", shift)
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
        self.noise_type = noise
        if grid is None:
            grid = flow_grid(num_steps, shift)
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if grid.shape != (num_steps + 1,):
            raise ValueError(f"grid must have steps + 1 = {num_steps + 1} points, got {tuple(grid.shape)}")
        if not bool((grid[:-1] > grid[1:]).all()) or grid[0] > 1 or grid[-1] < 0:
            raise ValueError("grid must descend strictly within [0, 1]")
        self.grid = grid
        t = grid[:-1]
        dt = grid[:-1] - grid[1:]
        self.timesteps = t.clone()
        self._dt = dt
        g = self.diffusion_coefficient()
        self._g = g
        a = 1 - dt * g**2 / (2 * t)
        c = dt * (1 + (1 - t) * g**2 / (2 * t))
        self._a, self._c, self._s = a, c, g * dt.sqrt()

    def diffusion_coefficient(self) -> torch.Tensor:
        """g at every step's start time (float64 [N])."""
        t = self.grid[:-1]
        if self.eta == 0:
            return torch.zeros_like(t)
        if self.noise_type == "dance":
            return torch.full_like(t, self.eta)
        one_minus = 1 - t
        if self.num_steps > 1:
            one_minus = torch.where(t >= 1, 1 - self.grid[1], one_minus)
        elif float(t[0]) >= 1:
            raise ValueError("flow-grpo noise needs at least 2 steps when the grid starts at t = 1")
        return self.eta * (t / one_minus).sqrt()

    def nominal_weights(self) -> torch.Tensor:
        """Native weights, with Flow-GRPO's patched t = 1 weight set equal to the next step's.

        g = a·sqrt(t/(1 − t)) is undefined at t = 1; the sampler patches (1 − t) there, which gives a
        step weight that reflects the patch rather than the schedule. The credit budget ζ (method.md
        §5: 4.315 for SD3.5-M) counts that step with the next step's weight instead.
        """
        w = self.native_weights()
        if self.noise_type == "flow-grpo" and self.eta > 0 and self.num_steps > 1 and float(self.grid[0]) >= 1:
            w[0] = w[1]
        return w

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "eta": self.eta,
            "noise": self.noise_type,
            "shift": self.shift,
        }

    def deterministic(self, steps: int | None = None) -> FlowSampler:
        """The Euler ODE on this sampler's grid (``steps`` = None or N), or on a new grid of ``steps`` with
        the same shift."""
        if steps is None or steps == self.num_steps:
            return FlowSampler(self.num_steps, eta=0.0, noise="dance", shift=self.shift, grid=self.grid)
        return FlowSampler(steps, eta=0.0, noise="dance", shift=self.shift)

    @classmethod
    def from_diffusers_sigmas(cls, sigmas, eta: float = 0.0, noise: str = "flow-grpo") -> FlowSampler:
        """From a diffusers ``FlowMatchEulerDiscreteScheduler.sigmas`` array (N + 1 values ending at 0)."""
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        return cls(num_steps=len(sig) - 1, eta=eta, noise=noise, grid=sig)

