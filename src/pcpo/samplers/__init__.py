"""Samplers: DDIM with η (DDPO) and the flow-matching SDEs (DanceGRPO, Flow-GRPO).

Each sampler exposes its per-step coefficients (a, c, s), the step's share of the trajectory Δt, the
native weights c/s, a pure ``step`` and its ``deterministic`` counterpart. Samplers also own the
trajectory loops: :func:`rollout` (a stochastic trajectory with every step's state, noise and
prediction kept, for training) and :func:`generate` / :func:`sample` (from fixed noise, for evaluation
and sampling). :data:`SAMPLERS` maps config names to constructors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..registry import Registry
from .base import Sampler, StepOutput
from .ddim import SCHEDULE_PRESETS, DDIMSampler
from .flow import FlowSampler, flow_grid, shift_time

__all__ = [
    "SAMPLERS",
    "SCHEDULE_PRESETS",
    "DDIMSampler",
    "FlowSampler",
    "Sampler",
    "StepOutput",
    "Trajectory",
    "build_sampler",
    "flow_grid",
    "generate",
    "rollout",
    "sample",
    "shift_time",
]

#: name -> constructor ``(steps, eta, shift, **options) -> Sampler``; meta ``kind`` (diffusion / flow)
#: and ``train`` (usable for training: has a log-density).
SAMPLERS: Registry[Callable[..., Sampler]] = Registry("sampler", field="sampler.name")


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"sampler {name!r} takes no DDIM options, got {sorted(options)}")


@SAMPLERS.register("ddim", kind="diffusion", train=True)
def _ddim(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """DDIM with noise η (DDPO); ``options``: schedule, spacing, betas, ... of :class:`DDIMSampler`."""
    return DDIMSampler(num_steps=steps, eta=eta, **options)


@SAMPLERS.register("dance-sde", kind="flow", train=True)
def _dance(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """DanceGRPO's flow SDE, g = η."""
    _no_options("dance-sde", options)
    return FlowSampler(num_steps=steps, eta=eta, noise="dance", shift=shift)


@SAMPLERS.register("flow-sde", kind="flow", train=True)
def _flow(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """Flow-GRPO's flow SDE, g = η·sqrt(t/(1−t))."""
    _no_options("flow-sde", options)
    return FlowSampler(num_steps=steps, eta=eta, noise="flow-grpo", shift=shift)


@SAMPLERS.register("ode", kind="flow", train=False)
def _ode(steps: int, eta: float = 0.0, shift: float = 1.0, **options) -> Sampler:
    """The flow Euler ODE (η ignored): evaluation only."""
    _no_options("ode", options)
    return FlowSampler(num_steps=steps, eta=0.0, noise="dance", shift=shift)


def build_sampler(name: str, steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """Sampler by registered name (``ddim`` takes DDIM ``options``: schedule, spacing, ...)."""
    return SAMPLERS.get(name)(steps, eta, shift, **options)


# ---- trajectory loops ---------------------------------------------------------------------------

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (x [B, ...], step index [B]) -> canonical p̂


@dataclass
class Trajectory:
    """One batch's stochastic trajectory: every step's input state, noise draw and prediction
    ([B, N, ...] each, float32) and the final state [B, ...]."""

    states: torch.Tensor
    noise: torch.Tensor
    preds: torch.Tensor
    final: torch.Tensor


@torch.no_grad()
def rollout(sampler: Sampler, x: torch.Tensor, predict: Predict, generator: torch.Generator | None = None,
            on_step: Callable[[], None] | None = None) -> Trajectory:
    """Run ``sampler`` from ``x`` keeping what the exact log-ratio needs later (docs/method.md §2).

    ``predict(x, step_index)`` returns the canonical guided prediction; noise comes from ``generator``.
    """
    N, B = sampler.num_steps, x.shape[0]
    states = torch.empty((B, N, *x.shape[1:]), dtype=torch.float32, device=x.device)
    noise = torch.empty_like(states)
    preds = torch.empty_like(states)
    for i in range(N):
        p = predict(x, torch.full((B,), i, dtype=torch.long))
        out = sampler.step(i, x, p, generator=generator)
        states[:, i] = x
        noise[:, i] = out.noise
        preds[:, i] = p
        x = out.prev_sample
        if on_step is not None:
            on_step()
    return Trajectory(states, noise, preds, x)


@torch.no_grad()
def sample(adapter, sampler: Sampler, prompts: Sequence[str], guidance_scale: float,
           generator: torch.Generator | None = None, x: torch.Tensor | None = None, cond=None) -> torch.Tensor:
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


@torch.no_grad()
def generate(adapter, sampler: Sampler, prompts: Sequence[str], guidance_scale: float, x: torch.Tensor,
             batch: int = 64, context: Callable[[], contextlib.AbstractContextManager] | None = None) -> torch.Tensor:
    """Decoded images [B, 3, H, W] for ``prompts`` from the fixed initial noise ``x``, ``batch`` at a
    time (``context``: e.g. an autocast factory entered around each batch)."""
    prompts = list(prompts)
    finals = []
    for s0 in range(0, len(prompts), batch):
        sl = slice(s0, s0 + batch)
        with (context() if context is not None else contextlib.nullcontext()):
            finals.append(sample(adapter, sampler, prompts[sl], guidance_scale, x=x[sl].float()))
    return adapter.decode(torch.cat(finals).float()).float()
