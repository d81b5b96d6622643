"""Per-iteration sampler and policy step under an SDE window (``train.sde_window``).

Without a window (``none``) every iteration uses the run's sampler and one :class:`PolicyStep`. With a
window, each training iteration (or each rollout batch, for windows registered ``per="batch"``) gets
the sampler with noise on the window's steps only and a policy step built for that sampler, so the
credit schemes (native, PCPO) are computed over the window's steps: "PCPO inside a window" is a config.
Built samplers and steps are cached by their SDE steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..algo.step import PolicyStep
from ..algo.windows import WINDOWS, Window, window_at
from ..samplers import Sampler

__all__ = ["Setup", "WindowPlan"]


@dataclass
class Setup:
    """One window's sampler, policy step and eligible (trained) steps."""

    window: Window
    sampler: Sampler
    policy: PolicyStep
    eligible: list[int]


class WindowPlan:
    """``plan.setups(epoch, batches, generator)`` → one :class:`Setup` per rollout batch."""

    def __init__(self, train_cfg, sampler_cfg, base: Sampler):
        self.train_cfg = train_cfg
        self.name = train_cfg.sde_window
        self.options = dict(train_cfg.sde_window_options or {})
        self.per = WINDOWS.meta(self.name)["per"]
        self.solver = getattr(sampler_cfg, "solver", "euler")
        self.compress_ratio = getattr(sampler_cfg, "compress_ratio", 0.4)
        self.base = base
        self._cache: dict[tuple, Setup] = {}
        if self.name == "none":
            self._cache[()] = self._setup(Window(list(range(base.num_steps)), list(range(base.num_steps))), base)

    @property
    def windowed(self) -> bool:
        return self.name != "none"

    def default(self) -> Setup:
        """The full-trajectory setup (the run's own sampler); with a window, its first iteration's (drawn from
        a fixed generator, so that the global random state is left alone)."""
        return self._cache[()] if not self.windowed else self.setups(1, 1, torch.Generator().manual_seed(0))[0]

    def _setup(self, window: Window, sampler: Sampler) -> Setup:
        policy = PolicyStep.from_config(self.train_cfg, sampler)
        stochastic = [i for i in range(sampler.num_steps) if bool(sampler.stochastic[i])]
        eligible = [i for i in window.trained if i in stochastic] if self.windowed else stochastic
        return Setup(window, sampler, policy, eligible)

    def _get(self, window: Window) -> Setup:
        key = (tuple(window.sde_steps), window.branching)
        if not self.windowed:
            return self._cache[()]
        if key not in self._cache:
            if not window.sde_steps:
                self._cache[key] = Setup(window, self.base.deterministic().inherit(self.base), None, [])
            else:
                kw = {}
                if self.solver != "euler":
                    kw = {"solver": self.solver, "compress_ratio": self.compress_ratio}
                sampler = self.base.with_window(window.sde_steps, **kw).inherit(self.base)
                self._cache[key] = self._setup(window, sampler)
        return self._cache[key]

    def setups(self, epoch: int, batches: int, generator) -> list[Setup]:
        """The setups of training epoch ``epoch`` (1-based; the window's iteration is ``epoch − 1``):
        one per rollout batch (the same for all under ``per="iteration"``)."""
        if not self.windowed:
            return [self._cache[()]] * batches
        n = self.base.num_steps
        if self.per == "batch":
            return [self._get(window_at(self.name, n, epoch - 1, generator, self.options)) for _ in range(batches)]
        return [self._get(window_at(self.name, n, epoch - 1, generator, self.options))] * batches
