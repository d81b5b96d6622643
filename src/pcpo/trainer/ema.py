"""Exponential moving average of the trained parameters (Flow-GRPO's ``train.ema``).

After optimizer step k (0-based), every ``every`` steps (when ``(k + 1) % every == 0``)::

    d_k   = min(decay, (1 + k) / (10 + k))          warm-up: early steps weigh the new weights more
    ema  ← ema + (1 − d_k) · (θ − ema)

Flow-GRPO uses decay 0.9 every 8 steps, and evaluates and saves with the averaged weights while
training continues on the raw ones; :meth:`ParameterEMA.swapped` does that swap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

__all__ = ["ParameterEMA"]


class ParameterEMA:
    """``ema.step(k)`` after optimizer step k; ``with ema.swapped(): evaluate()``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float, every: int = 1):
        if not 0 < decay <= 1:
            raise ValueError(f"train.ema_decay: must be in (0, 1], got {decay!r}")
        if every < 1:
            raise ValueError(f"train.ema_every: must be >= 1, got {every!r}")
        self.params = list(params)
        self.decay, self.every = float(decay), int(every)
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self, k: int) -> float:
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def step(self, k: int) -> None:
        """Fold the parameters in after optimizer step ``k`` (0-based), every ``every`` steps."""
        if (k + 1) % self.every:
            return
        one_minus = 1.0 - self.current_decay(k)
        for e, p in zip(self.shadow, self.params):
            e.add_(one_minus * (p.detach().to(e.dtype) - e))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights inside the block, the trained ones restored after it."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.shadow):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The shadow parameters as a flat dict (for a safetensors checkpoint)."""
        return {f"__ema__.{i}": e.detach().contiguous().cpu() for i, e in enumerate(self.shadow)}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow) or any(f"__ema__.{i}" not in tensors for i in range(len(self.shadow))):
            raise ValueError(f"EMA state: expected {len(self.shadow)} tensors __ema__.0…, got {len(tensors)}")
        for i, e in enumerate(self.shadow):
            e.copy_(tensors[f"__ema__.{i}"].to(e.device, e.dtype))
