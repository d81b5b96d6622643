"""DDIM with noise η (DDPO's sampler; SD1.x, SD2.x, SDXL).

    σ_t = η · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)) · sqrt(1 − α_t),     α_t = ᾱ_t / ᾱ_prev
    x_prev = x_t / sqrt(α_t) − C_t · ε̂ + σ_t z
    C_t = sqrt(1 − ᾱ_t)/sqrt(α_t) − sqrt(1 − ᾱ_prev − σ_t²)

η = 1 is the DDPM posterior variance (DDPO's default), η = 0 deterministic DDIM. Timesteps follow
diffusers' ``DDIMScheduler`` exactly ("leading", "trailing", "linspace" spacing, ``steps_offset``,
``prev = t − T // N``, ``final_alpha_one`` = ``set_alpha_to_one``), so the deterministic step equals
diffusers' step. v-prediction outputs are converted to ε̂ by :meth:`DDIMSampler.canonical`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Sampler, check_nonnegative, check_positive_int

SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")

# Named presets: the training schedules diffusers uses for these model families.
SCHEDULE_PRESETS: dict[str, dict] = {
    "sd15": dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                 steps_offset=1, final_alpha_one=False),
    "sd2": dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                steps_offset=1, final_alpha_one=False),
    "sdxl": dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                 steps_offset=1, final_alpha_one=False),
    "linear": dict(schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
                   steps_offset=0, final_alpha_one=True),
    "cosine": dict(schedule="squaredcos_cap_v2", num_train_timesteps=1000, steps_offset=0,
                   final_alpha_one=True),
}


def make_betas(schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """Training β schedule, float64, as diffusers computes it."""
    T = num_train_timesteps
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "squaredcos_cap_v2":
        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    raise ValueError(f"schedule must be one of {SCHEDULES} or a preset {sorted(SCHEDULE_PRESETS)}, got {schedule!r}")


def ddim_timesteps(num_steps: int, num_train_timesteps: int, spacing: str, steps_offset: int) -> np.ndarray:
    """Inference timesteps, descending, exactly as ``diffusers.DDIMScheduler.set_timesteps``."""
    T, N = num_train_timesteps, num_steps
    if spacing == "leading":
        ratio = T // N
        ts = (np.arange(0, N) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / N
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return ts


class DDIMSampler(Sampler):
    """N-step DDIM with noise η over a DDPM training schedule.

    Args:
        num_steps: inference steps N (> 0, at most ``num_train_timesteps``).
        eta: noise level η >= 0 (1 = DDPM posterior variance, 0 = deterministic).
        schedule: ``"scaled_linear"`` (SD1.x/SDXL), ``"linear"``, ``"squaredcos_cap_v2"``, or a preset
            name from ``SCHEDULE_PRESETS`` (``sd15``, ``sd2``, ``sdxl``, ``linear``, ``cosine``), whose
            values are defaults for the other arguments.
        betas: explicit training β's (overrides ``schedule``).
        spacing: ``"leading"`` (SD1.5 default), ``"trailing"`` or ``"linspace"``.
        steps_offset: added to "leading" timesteps (1 for SD1.5/SDXL).
        final_alpha_one: ᾱ used after the last step: 1 if True, else ᾱ_0 (SD1.5: False).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
    """

    kind = "ddim"

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 1.0,
        schedule: str = "sd15",
        *,
        beta_start: float | None = None,
        beta_end: float | None = None,
        num_train_timesteps: int | None = None,
        betas: torch.Tensor | None = None,
        spacing: str = "leading",
        steps_offset: int | None = None,
        final_alpha_one: bool | None = None,
        prediction_type: str = "epsilon",
    ):
        self.num_steps = check_positive_int("steps", num_steps)
        self.eta = check_nonnegative("eta", eta)
        preset = dict(SCHEDULE_PRESETS.get(schedule, {"schedule": schedule}))
        sched_name = preset.pop("schedule")
        if sched_name not in SCHEDULES and betas is None:
            raise ValueError(
                f"schedule must be one of {SCHEDULES} or a preset {sorted(SCHEDULE_PRESETS)}, got {schedule!r}"
            )
        T = num_train_timesteps if num_train_timesteps is not None else preset.get("num_train_timesteps", 1000)
        T = check_positive_int("num_train_timesteps", T)
        if self.num_steps > T:
            raise ValueError(f"steps ({num_steps}) must not exceed num_train_timesteps ({T})")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.spacing = spacing
        self.steps_offset = steps_offset if steps_offset is not None else preset.get("steps_offset", 0)
        self.final_alpha_one = final_alpha_one if final_alpha_one is not None else preset.get("final_alpha_one", True)
        self.schedule_name = schedule if betas is None else "custom"
        if betas is None:
            betas = make_betas(
                sched_name,
                beta_start if beta_start is not None else preset.get("beta_start", 0.0001),
                beta_end if beta_end is not None else preset.get("beta_end", 0.02),
                T,
            )
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.shape != (T,):
            raise ValueError(f"betas must have num_train_timesteps={T} entries, got {tuple(betas.shape)}")
        self.num_train_timesteps = T
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        final = torch.tensor(1.0, dtype=torch.float64) if self.final_alpha_one else self.alphas_cumprod[0]

        ts = ddim_timesteps(self.num_steps, T, spacing, self.steps_offset)
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(f"steps_offset={self.steps_offset} pushes timesteps outside [0, {T})")
        self.timesteps = torch.from_numpy(ts)
        prev = ts - T // self.num_steps
        self.prev_timesteps = torch.from_numpy(prev)
        abar_t = self.alphas_cumprod[self.timesteps]
        abar_prev = torch.where(
            self.prev_timesteps >= 0, self.alphas_cumprod[self.prev_timesteps.clamp(min=0)], final
        )
        self.abar_t, self.abar_prev = abar_t, abar_prev
        alpha_t = abar_t / abar_prev
        var = (1 - abar_prev) / (1 - abar_t) * (1 - alpha_t)
        sigma = self.eta * var.clamp(min=0).sqrt()
        self._a = 1.0 / alpha_t.sqrt()
        self._c = (1 - abar_t).sqrt() / alpha_t.sqrt() - (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        self._s = sigma
        # diffusers' DDIM always steps back T // N training timesteps: equal shares.
        self._dt = torch.full((self.num_steps,), (T // self.num_steps) / T, dtype=torch.float64)

    def deterministic(self, steps: int | None = None) -> DDIMSampler:
        """DDIM with η = 0 on the same training schedule and spacing (``steps`` = None keeps N)."""
        return DDIMSampler(steps or self.num_steps, eta=0.0, betas=self.betas,
                           num_train_timesteps=self.num_train_timesteps, spacing=self.spacing,
                           steps_offset=self.steps_offset, final_alpha_one=self.final_alpha_one,
                           prediction_type=self.prediction_type)

    @classmethod
    def from_diffusers(cls, scheduler, num_steps: int, eta: float = 1.0) -> DDIMSampler:
        """Build from a diffusers scheduler's config (``DDIMScheduler``/``DDPMScheduler``/...)."""
        cfg = scheduler.config
        betas = None
        if getattr(cfg, "trained_betas", None) is not None:
            betas = torch.tensor(cfg.trained_betas, dtype=torch.float64)
        return cls(
            num_steps=num_steps,
            eta=eta,
            schedule=cfg.beta_schedule,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            num_train_timesteps=cfg.num_train_timesteps,
            betas=betas,
            spacing=getattr(cfg, "timestep_spacing", "leading"),
            steps_offset=getattr(cfg, "steps_offset", 0),
            final_alpha_one=getattr(cfg, "set_alpha_to_one", True),
            prediction_type=getattr(cfg, "prediction_type", "epsilon"),
        )

    def canonical(self, i: int | torch.Tensor, x: torch.Tensor, raw_pred: torch.Tensor) -> torch.Tensor:
        """ε̂ from the network output (v-prediction: ε̂ = sqrt(ᾱ_t)·v̂ + sqrt(1 − ᾱ_t)·x_t).

        ``i`` may be a step index or a tensor [B] of step indices (one per row, for batched updates).
        """
        if self.prediction_type == "epsilon":
            return raw_pred
        dtype = torch.promote_types(raw_pred.dtype, torch.float32)
        abar = self.abar_t[torch.as_tensor(i)].to(device=x.device, dtype=dtype)
        if abar.ndim == 1:
            abar = abar.view(-1, *([1] * (x.ndim - 1)))
        return abar.sqrt() * raw_pred.to(dtype) + (1 - abar).sqrt() * x.to(dtype)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "eta": self.eta,
            "schedule": self.schedule_name,
            "spacing": self.spacing,
            "prediction_type": self.prediction_type,
        }
