"""Samplers: DDIM with η (DDPO) and the flow-matching SDEs (DanceGRPO, Flow-GRPO).

Each sampler exposes its per-step coefficients (a, c, s), the step's share of the trajectory Δt, the
native weights c/s and a pure ``step``. :func:`build_sampler` maps config names to samplers and
:func:`sample` runs a full trajectory with a :class:`~pcpo.models.base.ModelAdapter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Sampler, StepOutput
from .ddim import SCHEDULE_PRESETS, DDIMSampler
from .flow import FlowSampler, flow_grid, shift_time

SAMPLER_NAMES = ("ddim", "dance-sde", "flow-sde", "ode")

__all__ = [
    "SAMPLER_NAMES",
    "SCHEDULE_PRESETS",
    "DDIMSampler",
    "FlowSampler",
    "Sampler",
    "StepOutput",
    "build_sampler",
    "flow_grid",
    "sample",
    "shift_time",
]


def build_sampler(name: str, steps: int, eta: float, shift: float = 1.0, **ddim_kwargs) -> Sampler:
    """Sampler by config name.

    ``ddim`` (DDPO; ``ddim_kwargs`` = schedule, spacing, ...), ``dance-sde`` (g = η), ``flow-sde``
    (Flow-GRPO, g = η·sqrt(t/(1−t))), ``ode`` (flow Euler ODE, η ignored).
    """
    if name == "ddim":
        return DDIMSampler(num_steps=steps, eta=eta, **ddim_kwargs)
    if ddim_kwargs:
        raise ValueError(f"sampler {name!r} takes no DDIM options, got {sorted(ddim_kwargs)}")
    if name == "dance-sde":
        return FlowSampler(num_steps=steps, eta=eta, noise="dance", shift=shift)
    if name == "flow-sde":
        return FlowSampler(num_steps=steps, eta=eta, noise="flow-grpo", shift=shift)
    if name == "ode":
        return FlowSampler(num_steps=steps, eta=0.0, noise="dance", shift=shift)
    raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {name!r}")


@torch.no_grad()
def sample(
    adapter,
    sampler: Sampler,
    prompts: Sequence[str],
    guidance_scale: float,
    generator: torch.Generator | None = None,
    x: torch.Tensor | None = None,
    cond=None,
) -> torch.Tensor:
    """Run ``sampler`` with ``adapter`` from noise (or ``x``) for ``prompts``; returns the final state."""
    if cond is None:
        cond = adapter.encode_prompts(list(prompts))
    if x is None:
        x = adapter.initial_noise(len(prompts), generator=generator)
    for i in range(sampler.num_steps):
        t = sampler.model_time(i, x.shape[0], x.device)
        raw = adapter.predict(x, t, cond, guidance_scale)
        x = sampler.step(i, x, sampler.canonical(i, x, raw), generator=generator).prev_sample
    return x
