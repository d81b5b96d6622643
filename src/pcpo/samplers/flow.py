"""Flow-matching SDE samplers (DanceGRPO, Flow-GRPO, MixGRPO; SD3.x, FLUX.1).

Rectified flow ``x_t = (1 − t)·x_0 + t·noise``, velocity ``v = noise − x_0``, t = 1 is pure noise.
One Euler–Maruyama step of the marginal-preserving reverse SDE with diffusion coefficient g, from
t_i to t_{i+1} < t_i, Δt = t_i − t_{i+1} (docs/method.md §1.2)::

    x_next = x − Δt · [ v̂ + g²/(2t) · (x + (1 − t)·v̂) ] + g · sqrt(Δt) · z

so ``a = 1 − Δt·g²/(2t)``, ``c = Δt·(1 + (1 − t)·g²/(2t))``, ``s = g·sqrt(Δt)``.

* ``noise="dance"`` (DanceGRPO): g ≡ η.
* ``noise="flow-grpo"`` (Flow-GRPO): g = η·sqrt(t/(1 − t)), with (1 − t) at t = 1 replaced by
  (1 − t_1) (the next grid point), as Flow-GRPO does to avoid dividing by zero.
* η = 0 gives the deterministic Euler ODE ``x_next = x − Δt·v̂`` (evaluation).

**Grid** (``grid``):

* ``"linspace"`` (default): ``linspace(1, 0, N + 1)`` shifted by ``t ← s·t / (1 + (s − 1)·t)`` (s = 3
  for SD3.5/FLUX): DanceGRPO's grid and the one the paper's ζ is computed on.
* ``"pipeline"``: the sigmas of the stock diffusers pipeline (:func:`pipeline_grid`), which Flow-GRPO,
  GRPO-Guard and TempFlow-GRPO sample and train on. For SD3.5-M at N = 10 the two grids differ by up to
  0.24 (the last step starts at t = 0.009 instead of 0.25).
* an explicit descending tensor of N + 1 times from 1 to 0.

**SDE window** (``sde_steps``): only the listed steps draw noise; every other step has g = 0 (the Euler
ODE step, no log-density). This is how Flow-GRPO-Fast, MixGRPO and TempFlow-GRPO confine stochasticity
(:mod:`pcpo.algo.windows` says which steps, per iteration).

**Solver after the window** (``solver="dpmsolver++"``, MixGRPO-Flash): the grid after the window's last
step L is rebuilt with fewer points (:func:`flash_grid`) and those steps use the second-order multistep
DPM-Solver++ (midpoint) in data-prediction form; the final step is first order. Such a step is still
affine in the current prediction, with one extra term in the previous step's data prediction
``x̂_0 = x_{i−1} − t_{i−1}·v̂_{i−1}`` (``history``)::

    x_next = a_i·x − c_i·v̂ + b_i·x̂_0(previous step),      s_i = 0

The steps after the window are deterministic (no log-density, never trained), so the history term never
enters a log-ratio; :meth:`FlowSampler.step` takes it as ``history=`` and raises where it is needed but
missing (:meth:`FlowSampler.needs_history`, :meth:`FlowSampler.data_prediction`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .base import Sampler, StepOutput, check_nonnegative, check_positive, check_positive_int

NOISE_TYPES = ("dance", "flow-grpo")
GRIDS = ("linspace", "pipeline")
SOLVERS = ("euler", "dpmsolver++")

#: ``scheduler/scheduler_config.json`` of stabilityai/stable-diffusion-3.5-medium: a static shift of 3.
SD3_SCHEDULER_CONFIG: dict = {"num_train_timesteps": 1000, "shift": 3.0}

#: ``scheduler/scheduler_config.json`` of black-forest-labs/FLUX.1-dev: resolution-dependent shifting.
FLUX_SCHEDULER_CONFIG: dict = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift ``s·t / (1 + (s − 1)·t)`` (s > 0; s = 1 is the identity)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``linspace(1, 0, N + 1)`` shifted, float64, descending from 1 to 0."""
    check_positive_int("steps", num_steps)
    check_positive("shift", shift)
    return shift_time(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def pipeline_grid(num_steps: int, scheduler_config: dict, image_seq_len: int | None = None) -> torch.Tensor:
    """The N + 1 sigmas a stock diffusers pipeline samples on, float64, from 1 down to 0.

    Computed by diffusers' ``FlowMatchEulerDiscreteScheduler`` built from ``scheduler_config``
    (:data:`SD3_SCHEDULER_CONFIG`, :data:`FLUX_SCHEDULER_CONFIG`, or a model's own config):

    * static shift (``StableDiffusion3Pipeline``): ``set_timesteps(N)`` — N training timesteps evenly
      spaced from 1000 down to 1, divided by 1000, then shifted;
    * ``use_dynamic_shifting`` (``FluxPipeline``): ``set_timesteps(N, sigmas=linspace(1, 1/N, N), mu=μ)``
      with the exponential time shift and ``μ`` linear in ``image_seq_len`` (the number of latent image
      tokens: 4096 for FLUX at 1024², 1024 at 512²) between ``(base_image_seq_len, base_shift)`` and
      ``(max_image_seq_len, max_shift)``, as ``diffusers.pipelines.flux.pipeline_flux.calculate_shift``.

    The scheduler computes in float32; the values are returned as float64 copies of those.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    check_positive_int("steps", num_steps)
    sched = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    cfg = sched.config
    if cfg.use_dynamic_shifting:
        if image_seq_len is None:
            raise ValueError("pipeline_grid: this scheduler config uses dynamic shifting, so it needs "
                             "image_seq_len (the number of latent image tokens, e.g. 4096 for FLUX at 1024x1024)")
        m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
        mu = int(image_seq_len) * m + (cfg.base_shift - m * cfg.base_image_seq_len)
        sched.set_timesteps(num_steps, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    else:
        sched.set_timesteps(num_steps)
    return sched.sigmas.to(torch.float64)


def resolve_grid(num_steps: int, shift: float = 1.0, grid: torch.Tensor | str | None = None,
                 scheduler_config: dict | None = None, image_seq_len: int | None = None) -> torch.Tensor:
    """The N + 1 grid times for a ``grid`` choice (``"linspace"``/None, ``"pipeline"`` or explicit times).

    ``"pipeline"`` uses ``scheduler_config`` (default: a static-shift config with this ``shift``)."""
    check_positive_int("steps", num_steps)
    check_positive("shift", shift)
    if grid is None or (isinstance(grid, str) and grid == "linspace"):
        out = flow_grid(num_steps, shift)
    elif isinstance(grid, str) and grid == "pipeline":
        cfg = scheduler_config if scheduler_config is not None else {"num_train_timesteps": 1000, "shift": shift}
        out = pipeline_grid(num_steps, cfg, image_seq_len)
    elif isinstance(grid, str):
        raise ValueError(f"grid must be one of {GRIDS} or a tensor of times, got {grid!r}")
    else:
        out = torch.as_tensor(grid, dtype=torch.float64)
    if out.shape != (num_steps + 1,):
        raise ValueError(f"grid must have steps + 1 = {num_steps + 1} points, got {tuple(out.shape)}")
    if not bool((out[:-1] > out[1:]).all()) or out[0] > 1 or out[-1] < 0:
        raise ValueError("grid must descend strictly within [0, 1]")
    return out


def flash_grid(num_steps: int, last_sde_step: int, shift: float, compress_ratio: float) -> torch.Tensor:
    """MixGRPO-Flash's rebuilt grid for a window ending at step ``L = last_sde_step``.

    With ``u = linspace(1, 0, N + 1)`` (unshifted): the shifted grid up to ``t_L``, then
    ``M = int(max((N − L)·r, 1))`` points ``shift(linspace(u_{L+1}, 0, M))`` (so the rollout has L + M
    steps, the first of the new points being t_{L+1}). With M = 1 the grid ends at t_{L+1} > 0: the state
    after the window's last step is the final one, as in MixGRPO's schedule.
    """
    check_positive_int("steps", num_steps)
    check_positive("compress_ratio", compress_ratio)
    if not 0 <= last_sde_step < num_steps:
        raise ValueError(f"last_sde_step must be in [0, {num_steps - 1}], got {last_sde_step}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    m = int(max((num_steps - last_sde_step) * compress_ratio, 1))
    post = torch.linspace(float(u[last_sde_step + 1]), 0.0, m, dtype=torch.float64)
    return torch.cat([shift_time(u[: last_sde_step + 1], shift), shift_time(post, shift)])


def sde_step_mask(num_steps: int, sde_steps: Sequence[int] | None) -> torch.Tensor:
    """Bool [N]: True at the listed steps (all of them for None); bad indices raise naming sde_steps."""
    if sde_steps is None:
        return torch.ones(num_steps, dtype=torch.bool)
    mask = torch.zeros(num_steps, dtype=torch.bool)
    for i in sde_steps:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < num_steps:
            raise ValueError(f"sde_steps must be step indices in [0, {num_steps - 1}], got {i!r}")
        mask[int(i)] = True
    return mask


def _log_snr(sigma: float) -> float:
    """DPM-Solver's λ = log(α) − log(σ) with α = 1 − σ (±inf at σ = 1 and σ = 0)."""
    with np.errstate(divide="ignore"):
        return float(np.log(1.0 - sigma) - np.log(sigma))


class FlowSampler(Sampler):
    """N-step flow-matching SDE (or ODE at η = 0).

    Args:
        num_steps: number of steps N (> 0).
        eta: noise level: DanceGRPO's constant g = η (0.3 for FLUX) or Flow-GRPO's a (0.7); 0 = ODE.
        noise: ``"dance"`` (g = η) or ``"flow-grpo"`` (g = η·sqrt(t/(1 − t))).
        shift: timestep shift s > 0 (1 = none; 3 for SD3.5/FLUX).
        grid: ``"linspace"`` (default), ``"pipeline"`` (:func:`pipeline_grid` with ``scheduler_config``,
            default a static-shift config with ``shift``; ``image_seq_len`` for dynamic shifting) or an
            explicit descending grid of N + 1 times from 1 to 0.
        sde_steps: the steps that draw noise (None = all); the others are Euler ODE steps.
        solver: ``"euler"`` or ``"dpmsolver++"`` (MixGRPO-Flash: DPM-Solver++(2M) after the last SDE step
            on :func:`flash_grid` with ``compress_ratio``; the sampler then has L + M steps, not N).
    """

    kind = "flow"

    def __init__(
        self,
        num_steps: int = 10,
        eta: float = 0.7,
        noise: str = "flow-grpo",
        shift: float = 1.0,
        grid: torch.Tensor | str | None = None,
        *,
        scheduler_config: dict | None = None,
        image_seq_len: int | None = None,
        sde_steps: Sequence[int] | None = None,
        solver: str = "euler",
        compress_ratio: float = 0.4,
    ):
        check_positive_int("steps", num_steps)
        self.eta = check_nonnegative("eta", eta)
        self.shift = check_positive("shift", shift)
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.noise_type = noise
        self.grid_type = grid if isinstance(grid, str) else ("linspace" if grid is None else "explicit")
        self.scheduler_config = dict(scheduler_config) if scheduler_config is not None else None
        self.image_seq_len = image_seq_len
        self.solver = solver
        self.compress_ratio = float(compress_ratio)
        self.base_steps = num_steps
        if solver == "dpmsolver++":
            if self.grid_type != "linspace":
                raise ValueError("solver='dpmsolver++' (MixGRPO-Flash) rebuilds the shifted linspace grid after "
                                 "the window; use grid='linspace'")
            if not sde_steps:
                raise ValueError("solver='dpmsolver++' needs sde_steps (the window whose last step it follows)")
            sde_step_mask(num_steps, sde_steps)
            grid = flash_grid(num_steps, max(int(i) for i in sde_steps), shift, compress_ratio)
            num_steps = len(grid) - 1
        else:
            grid = resolve_grid(num_steps, shift, grid, scheduler_config, image_seq_len)
        self.num_steps = num_steps
        self.grid = grid
        self.sde_mask = sde_step_mask(num_steps, sde_steps)
        t = grid[:-1]
        dt = grid[:-1] - grid[1:]
        self.timesteps = t.clone()
        self._dt = dt
        g = self.diffusion_coefficient()
        self._g = g
        a = 1 - dt * g**2 / (2 * t)
        c = dt * (1 + (1 - t) * g**2 / (2 * t))
        self._a, self._c, self._s = a, c, g * dt.sqrt()
        self._b = torch.zeros_like(a)
        if solver == "dpmsolver++":
            self._dpm_tail(max(int(i) for i in sde_steps) + 1)

    def _dpm_tail(self, start: int) -> None:
        """DPM-Solver++ (data prediction x̂_0 = x − t·v̂, midpoint 2M) coefficients for steps >= start."""
        n = self.num_steps
        for i in range(start, n):
            s0, st = float(self.grid[i]), float(self.grid[i + 1])
            h = _log_snr(st) - _log_snr(s0)
            k = (1 - st) * (1 - math.exp(-h))       # α_t·(1 − e^{−h})
            if i == n - 1:                            # lower_order_final: first order
                extra, b = 0.0, 0.0
            else:
                r0 = (_log_snr(s0) - _log_snr(float(self.grid[i - 1]))) / h
                extra, b = 0.5 / r0, -k * 0.5 / r0
            self._a[i] = st / s0 + k * (1 + extra)
            self._c[i] = k * (1 + extra) * s0
            self._s[i] = 0.0
            self._b[i] = b

    def diffusion_coefficient(self) -> torch.Tensor:
        """g at every step's start time (float64 [N]; 0 outside ``sde_steps``)."""
        t = self.grid[:-1]
        if self.eta == 0:
            return torch.zeros_like(t)
        if self.noise_type == "dance":
            g = torch.full_like(t, self.eta)
        else:
            one_minus = 1 - t
            if self.num_steps > 1:
                one_minus = torch.where(t >= 1, 1 - self.grid[1], one_minus)
            elif float(t[0]) >= 1:
                raise ValueError("flow-grpo noise needs at least 2 steps when the grid starts at t = 1")
            g = self.eta * (t / one_minus).sqrt()
        return torch.where(self.sde_mask, g, torch.zeros_like(g))

    def nominal_weights(self) -> torch.Tensor:
        """Native weights, with Flow-GRPO's patched t = 1 weight set equal to the next step's.

        g = a·sqrt(t/(1 − t)) is undefined at t = 1; the sampler patches (1 − t) there, which gives a
        step weight that reflects the patch rather than the schedule. The credit budget ζ (docs/method.md
        §5: 4.315 for SD3.5-M on the linspace grid) counts that step with the next step's weight instead
        (when both steps are stochastic).
        """
        w = self.native_weights()
        if (self.noise_type == "flow-grpo" and self.eta > 0 and self.num_steps > 1 and float(self.grid[0]) >= 1
                and bool(self.sde_mask[0]) and bool(self.sde_mask[1])):
            w[0] = w[1]
        return w

    # ---- multistep tail ---------------------------------------------------------------------
    def needs_history(self, i: int) -> bool:
        """Whether step ``i`` needs ``history=`` (the previous step's data prediction)."""
        self._check_index(i)
        return bool(self._b[i] != 0)

    def history_coefficients(self) -> torch.Tensor:
        """b_i of the multistep term (float64 [N]; 0 for single-step steps)."""
        return self._b.clone()

    def data_prediction(self, i: int, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x̂_0 = x − t_i·v̂ at step ``i`` (what the next multistep step takes as ``history``)."""
        self._check_index(i)
        return x - float(self.grid[i]) * pred

    def step(self, i: int, x: torch.Tensor, pred: torch.Tensor, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, history: torch.Tensor | None = None) -> StepOutput:
        """One step (see :meth:`Sampler.step`); multistep steps also take ``history``, the data
        prediction of the previous step (:meth:`data_prediction`)."""
        out = super().step(i, x, pred, noise=noise, generator=generator)
        b = float(self._b[i])
        if b != 0:
            if history is None:
                raise ValueError(f"step {i} of this dpmsolver++ sampler is multistep: pass history= the previous "
                                 "step's data_prediction(i - 1, x_prev, pred_prev)")
            extra = b * history.to(out.mean.dtype)
            out = StepOutput(prev_sample=out.prev_sample + extra, mean=out.mean + extra, std=out.std, noise=out.noise)
        return out

    # ---- construction -----------------------------------------------------------------------
    def describe(self) -> dict:
        d = {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "eta": self.eta,
            "noise": self.noise_type,
            "shift": self.shift,
            "grid": self.grid_type,
        }
        if not bool(self.sde_mask.all()):
            d["sde_steps"] = [int(i) for i in torch.nonzero(self.sde_mask).flatten()]
        if self.solver != "euler":
            d.update(solver=self.solver, compress_ratio=self.compress_ratio, base_steps=self.base_steps)
        return d

    def _grid_spec(self):
        return self.grid if self.grid_type == "explicit" else self.grid_type

    def with_window(self, sde_steps: Sequence[int] | None, solver: str = "euler",
                    compress_ratio: float | None = None) -> FlowSampler:
        """The same SDE with noise only on ``sde_steps`` (an SDE window), on this sampler's grid
        (``solver="dpmsolver++"``: MixGRPO-Flash's rebuilt grid after the window)."""
        if self.solver != "euler":
            raise ValueError("with_window: build windows from the base sampler, not from a dpmsolver++ one")
        return FlowSampler(self.num_steps, eta=self.eta, noise=self.noise_type, shift=self.shift,
                           grid=self._grid_spec(), scheduler_config=self.scheduler_config,
                           image_seq_len=self.image_seq_len, sde_steps=sde_steps, solver=solver,
                           compress_ratio=self.compress_ratio if compress_ratio is None else compress_ratio)

    def deterministic(self, steps: int | None = None) -> FlowSampler:
        """The Euler ODE on this sampler's grid (``steps`` = None or N), or on a new grid of ``steps`` of the
        same kind (linspace with this shift, or the pipeline's; an explicit grid falls back to linspace)."""
        if steps is None or steps == self.num_steps:
            return FlowSampler(self.num_steps, eta=0.0, noise="dance", shift=self.shift, grid=self.grid)
        grid = "pipeline" if self.grid_type == "pipeline" else "linspace"
        return FlowSampler(steps, eta=0.0, noise="dance", shift=self.shift, grid=grid,
                           scheduler_config=self.scheduler_config, image_seq_len=self.image_seq_len)

    @classmethod
    def from_diffusers_sigmas(cls, sigmas, eta: float = 0.0, noise: str = "flow-grpo") -> FlowSampler:
        """From a diffusers ``FlowMatchEulerDiscreteScheduler.sigmas`` array (N + 1 values ending at 0)."""
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        return cls(num_steps=len(sig) - 1, eta=eta, noise=noise, grid=sig)
