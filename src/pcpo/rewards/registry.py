"""Reward registry: a reward is a callable ``(images [B,3,H,W] in [0,1], prompts) -> Tensor[B]``.

Rewards are registered by name so that configs can say ``reward: {name: color_match}`` or a weighted
sum ``reward: {sum: {color_match: 1.0, alignment: 0.1}}``. Heavy rewards load lazily in their factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

RewardFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]

_REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Register a reward factory under ``name`` (the factory takes keyword options, returns the callable)."""

    def deco(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_rewards() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def build_reward(name: str, **kwargs) -> RewardFn:
    """Build the reward registered as ``name`` with options ``kwargs``."""
    _import_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"reward.name: unknown reward {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


class WeightedSum:
    """``Σ_k weight_k · reward_k`` (each term also reported by :meth:`components`)."""

    def __init__(self, terms: dict[str, tuple[float, RewardFn]]):
        if not terms:
            raise ValueError("reward.sum: give at least one reward with its weight")
        self.terms = terms

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {name: fn(images, prompts).float() for name, (_, fn) in self.terms.items()}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        comps = self.components(images, prompts)
        return sum(self.terms[name][0] * value for name, value in comps.items())


def _import_builtin() -> None:
    # Importing the modules registers their rewards. Kept lazy so `import pcpo` stays light.
    import importlib

    for mod in ("pcpo.rewards.world", "pcpo.rewards.real"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # module not written yet / optional
            if e.name != mod:
                raise
