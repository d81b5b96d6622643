"""Reward registry: a reward is a callable ``(images [B,3,H,W] in [0,1], prompts) -> Tensor[B]``.

Rewards are registered by name so that configs can say ``reward: {name: color_match}`` or a weighted
sum ``reward: {sum: {color_match: 1.0, alignment: 0.1}}``. Heavy rewards load lazily in their factory.

Per-prompt metadata: a reward that also declares a ``metadata`` keyword,
``(images, prompts, *, metadata: list[dict] | None = None) -> Tensor[B]``, receives one dict per image,
aligned with ``images`` and ``prompts`` (the prompt file's other fields, e.g. GenEval's ``tag``,
``include`` and ``exclude``), or ``None`` when the prompt source carries none. Rewards without that
keyword are called as before. The trainer and ``pcpo eval`` call every reward through
:func:`call_reward`, which makes that choice from the callable's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError

RewardFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
Metadata = Sequence[dict] | None

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
    """Build the reward registered as ``name`` with options ``kwargs``.

    The options are checked against the factory's signature first: an unknown or missing option is a
    one-line :class:`~pcpo.errors.ConfigError` naming ``reward.options`` and the allowed keys.
    """
    _import_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"reward.name: unknown reward {name!r}; choose one of {sorted(_REGISTRY)}")
    factory = _REGISTRY[name]
    check_options(name, factory, kwargs)
    return factory(**kwargs)


def check_options(name: str, factory: Callable[..., RewardFn], options: dict) -> None:
    """Raise a one-line ConfigError if ``options`` do not fit ``factory``'s keyword parameters."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature (some C callables): let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        allowed = None  # the factory takes **options itself
    else:
        allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if allowed is not None:
        unknown = [k for k in options if k not in allowed]
        if unknown:
            listed = ", ".join(allowed) if allowed else "none (this reward takes no options)"
            raise ConfigError(f"reward.options: unknown option {unknown[0]!r} for reward {name!r}; "
                              f"allowed: {listed}")
    missing = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.default is p.empty and p.name not in options]
    if missing:
        raise ConfigError(f"reward.options.{missing[0]}: required by reward {name!r}; set it in the "
                          f"config (reward.options.{missing[0]}: VALUE)")


def accepts_metadata(fn) -> bool:
    """Whether the reward ``fn`` takes per-prompt metadata: a keyword parameter ``metadata`` (or ``**kwargs``)
    on the function, or on ``__call__`` of a callable object."""
    flag = getattr(fn, "accepts_metadata", None)
    if isinstance(flag, bool):
        return flag
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: call it the classic way
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "metadata" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


def call_reward(fn, images: torch.Tensor, prompts: Sequence[str], metadata: Metadata = None) -> torch.Tensor:
    """``fn(images, prompts)``, with ``metadata=`` added when ``fn`` accepts it (:func:`accepts_metadata`).

    ``metadata`` is one dict per image, aligned with ``prompts``; a length mismatch is a ``ValueError``."""
    if metadata is not None and len(metadata) != len(prompts):
        raise ValueError(f"reward metadata: {len(metadata)} entries for {len(prompts)} prompts")
    if accepts_metadata(fn):
        return fn(images, prompts, metadata=None if metadata is None else list(metadata))
    return fn(images, prompts)


class WeightedSum:
    """``Σ_k weight_k · reward_k`` (each term also reported by :meth:`components`)."""

    def __init__(self, terms: dict[str, tuple[float, RewardFn]]):
        if not terms:
            raise ValueError("reward.sum: give at least one reward with its weight")
        self.terms = terms

    def check(self) -> None:
        """Run the ``check()`` of every term that has one (e.g. a remote reward's health check)."""
        for _, fn in self.terms.values():
            check = getattr(fn, "check", None)
            if callable(check):
                check()

    def components(self, images: torch.Tensor, prompts: Sequence[str],
                   metadata: Metadata = None) -> dict[str, torch.Tensor]:
        """Each term's reward; ``metadata`` goes to the terms that accept it (:func:`call_reward`)."""
        return {name: call_reward(fn, images, prompts, metadata).float() for name, (_, fn) in self.terms.items()}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Metadata = None) -> torch.Tensor:
        comps = self.components(images, prompts, metadata)
        return sum(self.terms[name][0] * value for name, value in comps.items())


def _import_builtin() -> None:
    # Importing the modules registers their rewards. Kept lazy so `import pcpo` stays light.
    import importlib

    for mod in ("pcpo.rewards.world", "pcpo.rewards.remote", "pcpo.rewards.real"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # module not written yet / optional
            if e.name != mod:
                raise
