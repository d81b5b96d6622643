"""Small statistics for benchmarks: epochs to a target, confidence intervals over seeds, speed-ups.

Pure functions on Python lists / floats so they are testable on synthetic curves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def epochs_to_target(epochs: Sequence[int], values: Sequence[float | None], target: float,
                     smooth: int = 1) -> int | None:
    """First epoch at which ``values`` (optionally a trailing mean over ``smooth`` points) reaches ``target``.

    ``None`` values (epochs without a measurement) are skipped. Returns ``None`` if the curve never
    reaches the target (the caller decides how to count a censored run).
    """
    if smooth < 1:
        raise ValueError(f"smooth: must be >= 1, got {smooth}")
    pts = [(int(e), float(v)) for e, v in zip(epochs, values) if v is not None and math.isfinite(float(v))]
    pts.sort()
    window: list[float] = []
    for e, v in pts:
        window.append(v)
        if len(window) > smooth:
            window.pop(0)
        if len(window) == smooth and sum(window) / smooth >= target:
            return e
    return None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; one value gives a zero-width interval."""
    xs = [float(v) for v in values]
    if not xs:
        return (math.nan, math.nan, math.nan)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return (m, m, m)
    from scipy import stats

    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return (m, m - half, m + half)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean (resampling seeds)."""
    xs = [float(v) for v in values]
    if not xs:
        return (math.nan, math.nan, math.nan)
    m = sum(xs) / len(xs)
    rng = random.Random(seed)
    boots = sorted(sum(rng.choice(xs) for _ in xs) / len(xs) for _ in range(n_boot))
    lo = boots[int(math.floor((1 - confidence) / 2 * (n_boot - 1)))]
    hi = boots[int(math.ceil((1 + confidence) / 2 * (n_boot - 1)))]
    return (m, lo, hi)


def speedup_interval(baseline: Sequence[float], method: Sequence[float], confidence: float = 0.95,
                     n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Speed-up ``mean(baseline)/mean(method) − 1`` with a bootstrap interval (seeds resampled per arm)."""
    b = [float(v) for v in baseline]
    p = [float(v) for v in method]
    if not b or not p or sum(p) <= 0:  # the method reached the target before training: undefined
        return (math.nan, math.nan, math.nan)
    point = (sum(b) / len(b)) / (sum(p) / len(p)) - 1
    rng = random.Random(seed)
    boots = []
    for _ in range(n_boot):
        mb = sum(rng.choice(b) for _ in b) / len(b)
        mp = sum(rng.choice(p) for _ in p) / len(p)
        boots.append(mb / mp - 1 if mp > 0 else math.inf)
    boots.sort()
    lo = boots[int(math.floor((1 - confidence) / 2 * (n_boot - 1)))]
    hi = boots[int(math.ceil((1 + confidence) / 2 * (n_boot - 1)))]
    return (point, lo, hi)


def censored(values: Sequence[int | None], cap: int) -> tuple[list[float], int]:
    """Replace ``None`` (never reached) by ``cap`` (a lower bound); also return how many were censored."""
    out = [float(cap if v is None else v) for v in values]
    return out, sum(v is None for v in values)
