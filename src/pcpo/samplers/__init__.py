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
from .cps import CPSSampler
from .ddim import SCHEDULE_PRESETS, DDIMSampler
from .flow import FlowSampler, flow_grid, shift_time

__all__ = [
    "SAMPLERS",
    "SCHEDULE_PRESETS",
    "CPSSampler",
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


_GRID_OPTIONS = ("grid", "scheduler_config", "image_seq_len")


def _grid_options(name: str, options: dict) -> dict:
    """Flow samplers take the grid options only (``grid``, ``scheduler_config``, ``image_seq_len``)."""
    unknown = sorted(set(options) - set(_GRID_OPTIONS))
    if unknown:
        raise ValueError(f"sampler {name!r} takes only the grid options {', '.join(_GRID_OPTIONS)}, got {unknown}")
    return options


@SAMPLERS.register("ddim", kind="diffusion", train=True)
def _ddim(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """DDIM with noise η (DDPO); ``options``: schedule, spacing, betas, ... of :class:`DDIMSampler`."""
    return DDIMSampler(num_steps=steps, eta=eta, **options)


@SAMPLERS.register("dance-sde", kind="flow", train=True)
def _dance(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """DanceGRPO's flow SDE, g = η."""
    return FlowSampler(num_steps=steps, eta=eta, noise="dance", shift=shift, **_grid_options("dance-sde", options))


@SAMPLERS.register("flow-sde", kind="flow", train=True)
def _flow(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """Flow-GRPO's flow SDE, g = η·sqrt(t/(1−t))."""
    return FlowSampler(num_steps=steps, eta=eta, noise="flow-grpo", shift=shift, **_grid_options("flow-sde", options))


@SAMPLERS.register("ode", kind="flow", train=False)
def _ode(steps: int, eta: float = 0.0, shift: float = 1.0, **options) -> Sampler:
    """The flow Euler ODE (η ignored): evaluation only."""
    return FlowSampler(num_steps=steps, eta=0.0, noise="dance", shift=shift, **_grid_options("ode", options))


@SAMPLERS.register("cps", kind="flow", train=True)
def _cps(steps: int, eta: float, shift: float = 1.0, **options) -> Sampler:
    """Flow-GRPO's coefficients-preserving sampler (``sde_type="cps"``), noise level η in [0, 1]."""
    return CPSSampler(num_steps=steps, eta=eta, shift=shift, **_grid_options("cps", options))


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


def _needs_history(sampler: Sampler, i: int) -> bool:
    needs = getattr(sampler, "needs_history", None)
    return needs is not None and 0 <= i < sampler.num_steps and needs(i)


def _step(sampler: Sampler, i: int, x: torch.Tensor, p: torch.Tensor, generator, history):
    """Step ``i``, given the previous step's data prediction where the step is multistep (MixGRPO-Flash's
    DPM-Solver++ tail); returns the output and the data prediction the next step needs (else None)."""
    out = sampler.step(i, x, p, generator=generator, **({"history": history} if _needs_history(sampler, i) else {}))
    return out, (sampler.data_prediction(i, x, p) if _needs_history(sampler, i + 1) else None)


@torch.no_grad()
def rollout(sampler: Sampler, x: torch.Tensor, predict: Predict, generator: torch.Generator | None = None,
            on_step: Callable[[], None] | None = None, start: int = 0, stop: int | None = None) -> Trajectory:
    """Run ``sampler`` from ``x`` keeping what the exact log-ratio needs later (docs/method.md §2).

    ``predict(x, step_index)`` returns the canonical guided prediction; noise comes from ``generator``.
    ``start``/``stop``: run only steps ``start … stop − 1`` from the state ``x`` at step ``start`` (the
    returned tensors then hold those steps only); multistep steps (MixGRPO-Flash's DPM-Solver++ tail)
    get the previous step's data prediction as ``history``.
    """
    N, B = sampler.num_steps, x.shape[0]
    stop = N if stop is None else stop
    if not 0 <= start <= stop <= N:
        raise ValueError(f"rollout: need 0 <= start <= stop <= {N}, got start={start}, stop={stop}")
    n = stop - start
    states = torch.empty((B, n, *x.shape[1:]), dtype=torch.float32, device=x.device)
    noise = torch.empty_like(states)
    preds = torch.empty_like(states)
    history = None
    for k, i in enumerate(range(start, stop)):
        p = predict(x, torch.full((B,), i, dtype=torch.long))
        out, history = _step(sampler, i, x, p, generator, history)
        states[:, k] = x
        noise[:, k] = out.noise
        preds[:, k] = p
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
    history = None
    for i in range(sampler.num_steps):
        t = sampler.model_time(i, x.shape[0], x.device)
        p = sampler.canonical(i, x, adapter.predict(x, t, cond, guidance_scale))
        out, history = _step(sampler, i, x, p, generator, history)
        x = out.prev_sample
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
