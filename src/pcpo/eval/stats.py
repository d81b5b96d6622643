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


# ---------------------------------------------------------------------------- paired analysis and power

def paired_speedup_interval(baseline: Sequence[float], method: Sequence[float], confidence: float = 0.95,
                            n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Speed-up ``mean(baseline)/mean(method) − 1`` of paired runs (entry i of both = the same seed).

    Percentile bootstrap over seeds with the pairs resampled together (``scipy.stats.bootstrap``,
    ``paired=True``), so the seed-to-seed spread that both arms share does not widen the interval.
    """
    import warnings

    import numpy as np
    from scipy import stats

    b = np.asarray(baseline, dtype=float)
    p = np.asarray(method, dtype=float)
    if b.shape != p.shape:
        raise ValueError(f"paired speed-up: got {b.size} baseline and {p.size} method values")
    if b.size == 0 or p.sum() <= 0:  # nothing to compare, or the method was at the target before training
        return (math.nan, math.nan, math.nan)
    point = float(b.mean() / p.mean() - 1)
    if b.size < 2:
        return (point, point, point)

    def ratio(x, y, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(x, axis=axis) / np.mean(y, axis=axis) - 1

    if np.all(b == b[0]) and np.all(p == p[0]):  # every resample gives the point value
        return (point, point, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((b, p), ratio, paired=True, vectorized=True, n_resamples=n_boot,
                              confidence_level=confidence, method="percentile",
                              random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (point, lo, hi)


def t_half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Half-width ``t_{(1+c)/2, n−1} · sd / sqrt(n)`` of the Student-t interval of a mean of ``n`` values."""
    from scipy import stats

    if n < 2:
        return math.inf
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(sd) / math.sqrt(n)


def seeds_for_half_width(sd: float, half_width: float, confidence: float = 0.95, n_min: int = 2,
                         n_max: int = 1_000_000) -> int | None:
    """Smallest ``n >= n_min`` whose t-interval half-width ``t_{n−1} sd/√n`` is at most ``half_width``.

    The t quantile depends on ``n``, so ``n`` is found by iteration: start from the normal-quantile
    solution ``(z·sd/h)²`` (a lower bound, since ``t_{n−1} > z``) and step up. ``None`` when the
    half-width is not positive or more than ``n_max`` seeds would be needed.
    """
    from scipy import stats

    sd, h = abs(float(sd)), float(half_width)
    if not (math.isfinite(sd) and math.isfinite(h)) or h <= 0:
        return None
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    n = max(n_min, 2, math.floor((z * sd / h) ** 2))
    while n <= n_max:
        if t_half_width(sd, n, confidence) <= h:
            return n
        n += 1
    return None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error over the given family), in the input order."""
    ps = [float(p) for p in pvalues]
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adj = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        if math.isnan(ps[i]):
            continue
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adj[i] = running
    return adj


def paired_t_pvalue(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (mean difference = 0); NaN for fewer than two values."""
    from scipy import stats

    xs = [float(v) for v in diffs]
    if len(xs) < 2:
        return math.nan
    if all(x == xs[0] for x in xs):
        return 0.0 if xs[0] != 0 else 1.0
    return float(stats.ttest_1samp(xs, 0.0).pvalue)


def decide_difference(diffs: Sequence[float], reference: float, margin: float,
                      confidence: float = 0.95) -> dict:
    """The pre-registered decision on a paired difference (treatment − reference arm, per seed).

    ``reference`` is the reference arm's mean of the metric (its mean gain), ``margin`` the relevant
    relative difference δ (also the half-width criterion). With the t-interval ``[lo, hi]`` of the mean
    difference, in units of ``reference``:

    * ``lo > 0``: "better by X % [a, b]"; ``hi < 0``: "worse by X % [a, b]";
    * ``[lo, hi]`` inside ``±δ``: "no difference larger than Y %" (Y = the larger bound, ≤ δ);
    * otherwise "undecided at this budget".

    When the reference arm does not improve (``reference <= 0``) differences are not relative: only a
    sign decision is made, in absolute units.
    """
    m, lo, hi = t_interval(diffs, confidence)
    n = len(diffs)
    sd = (math.sqrt(sum((x - m) ** 2 for x in diffs) / (n - 1)) if n >= 2 else math.nan)
    out = {"n": n, "mean": m, "low": lo, "high": hi, "sd": sd, "reference": float(reference),
           "margin": float(margin), "half_width": (hi - lo) / 2 if n >= 2 else math.nan}
    rel_ok = math.isfinite(reference) and reference > 0
    out["target_half_width"] = margin * reference if rel_ok else math.nan
    out["half_width_met"] = bool(rel_ok and n >= 2 and out["half_width"] <= out["target_half_width"])
    out["seeds_needed"] = (seeds_for_half_width(sd, out["target_half_width"], confidence)
                           if rel_ok and n >= 2 else None)
    if n < 2:
        out.update(label="undecided at this budget (fewer than two paired seeds)", verdict="undecided")
        return out
    if rel_ok:
        r = [100 * v / reference for v in (m, lo, hi)]
        out["relative"] = r
        if lo > 0:
            out.update(verdict="better", label=f"better by {r[0]:.0f} % [{r[1]:.0f}, {r[2]:.0f}]")
        elif hi < 0:
            out.update(verdict="worse", label=f"worse by {-r[0]:.0f} % [{-r[2]:.0f}, {-r[1]:.0f}]")
        elif max(abs(lo), abs(hi)) <= margin * reference:
            bound = max(abs(r[1]), abs(r[2]))
            out.update(verdict="no difference", label=f"no difference larger than {math.ceil(bound):.0f} %")
        else:
            out.update(verdict="undecided", label="undecided at this budget")
        return out
    out["relative"] = None
    if lo > 0:
        out.update(verdict="better", label=f"better by {m:+.3g} [{lo:+.3g}, {hi:+.3g}] (absolute; reference gain <= 0)")
    elif hi < 0:
        out.update(verdict="worse", label=f"worse by {-m:.3g} [{-hi:.3g}, {-lo:.3g}] (absolute; reference gain <= 0)")
    else:
        out.update(verdict="undecided", label="undecided at this budget (reference gain <= 0)")
    return out


def decide_speedup(interval: Sequence[float] | None, margin: float, what: str = "faster",
                   censored: tuple[int, int] = (0, 0)) -> dict:
    """Decision on a speed-up interval ``(s, lo, hi)`` (``s = cost(reference)/cost(arm) − 1``).

    ``lo > 0``: "faster by X % [a, b]"; ``hi < 0``: "slower by ..."; ``[lo, hi]`` inside ``±margin``: "no
    difference larger than Y %"; otherwise (or undefined) "undecided at this budget".

    ``censored`` = (runs of the arm, runs of the reference) that never reached the target and count as the
    budget. Censoring the arm makes the speed-up an upper bound, censoring the reference a lower bound, so
    "faster" needs an uncensored arm, "slower" an uncensored reference and "no difference" neither.
    """
    if not interval or not all(math.isfinite(float(v)) for v in interval):
        return {"verdict": "undecided", "label": "undecided at this budget (target not reached)"}
    s, lo, hi = (100 * float(v) for v in interval)
    slower = {"faster": "slower", "cheaper": "costlier"}.get(what, "slower")
    c_arm, c_ref = (int(c) for c in censored)
    note = f" (censored runs: {c_arm} of the arm, {c_ref} of the reference)"
    if lo > 0:
        if c_arm:
            return {"verdict": "undecided", "label": "undecided at this budget" + note}
        return {"verdict": what, "label": f"{what} by {s:.0f} % [{lo:.0f}, {hi:.0f}]"}
    if hi < 0:
        if c_ref:
            return {"verdict": "undecided", "label": "undecided at this budget" + note}
        return {"verdict": slower, "label": f"{slower} by {-s:.0f} % [{-hi:.0f}, {-lo:.0f}]"}
    if max(abs(lo), abs(hi)) <= 100 * margin:
        if c_arm or c_ref:
            return {"verdict": "undecided", "label": "undecided at this budget" + note}
        return {"verdict": "no difference",
                "label": f"no difference larger than {math.ceil(max(abs(lo), abs(hi))):.0f} %"}
    return {"verdict": "undecided", "label": "undecided at this budget"}
