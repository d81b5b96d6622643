"""Which sampler steps of a trajectory are trained (docs/method.md §3), registered by name.

A selection maps the trajectory's eligible steps (those with a log-density) to the trained ones, with
its own random stream so that resume is exact:

* ``all_shuffled`` (DDPO): a random permutation of the steps, the first ``int(n·fraction)``.
* ``drop_last_random`` (DanceGRPO): drop the last step, then a random ``fraction`` of the rest.
* ``first_fraction`` (Flow-GRPO): the first ``int(n·fraction)`` steps in order (0.99 → never the last).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..registry import Registry

SelectFn = Callable[[float, list[int], torch.Generator], list[int]]
SELECTIONS: Registry[SelectFn] = Registry("timestep selection", field="train.timestep_selection")


def _count(steps: list[int], fraction: float) -> int:
    return max(1, int(len(steps) * fraction))


def _random_subset(steps: list[int], fraction: float, gen: torch.Generator) -> list[int]:
    perm = torch.randperm(len(steps), generator=gen).tolist()
    return sorted(steps[j] for j in perm[: _count(steps, fraction)])


@SELECTIONS.register("all_shuffled")
def all_shuffled(fraction: float, eligible: list[int], gen: torch.Generator) -> list[int]:
    return _random_subset(list(eligible), fraction, gen)


@SELECTIONS.register("drop_last_random")
def drop_last_random(fraction: float, eligible: list[int], gen: torch.Generator) -> list[int]:
    steps = list(eligible)
    return _random_subset(steps[:-1] or steps, fraction, gen)


@SELECTIONS.register("first_fraction")
def first_fraction(fraction: float, eligible: list[int], gen: torch.Generator) -> list[int]:
    steps = list(eligible)
    return steps[: _count(steps, fraction)]


def select_timesteps(mode: str, fraction: float, eligible: list[int], gen: torch.Generator) -> list[int]:
    """The trained steps of one trajectory under the registered selection ``mode``."""
    return SELECTIONS.get(mode)(fraction, eligible, gen)
