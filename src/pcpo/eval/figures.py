"""Figures for ``pcpo report`` and ``pcpo bench`` (matplotlib, Agg), returned as PNG bytes or saved.

Everything takes plain records (the dicts of ``metrics.jsonl``) so figures can be drawn from a finished
or a running run without touching the model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OBJECTIVE_STYLE = {
    "clipped": dict(color="#d62728", label="clipped ratio (baseline)"),
    "log_hinge": dict(color="#ff7f0e", label="log-hinge (PCPO-base)"),
    "pcpo": dict(color="#1f77b4", label="PCPO"),
}


def to_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v)) else math.nan


def step_matrix(records: Sequence[dict], key: str) -> tuple[list[int], np.ndarray]:
    """(epochs, [E, N] matrix) of a per-step list metric; missing values are NaN."""
    rows = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), list)]
    if not rows:
        return [], np.zeros((0, 0))
    n = max(len(v) for _, v in rows)
    mat = np.full((len(rows), n), np.nan)
    for i, (_, v) in enumerate(rows):
        mat[i, : len(v)] = [_num(x) for x in v]
    return [e for e, _ in rows], mat


def fig_reward_curves(records: Sequence[dict], title: str = ""):
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_reward_mean" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        e = np.array([r["epoch"] for r in train])
        m = np.array([_num(r["reward_mean"]) for r in train])
        s = np.array([_num(r.get("reward_std", 0.0)) for r in train])
        ax.plot(e, m, color="#1f77b4", label="training reward (SDE rollouts)")
        ax.fill_between(e, m - s, m + s, color="#1f77b4", alpha=0.15, label="± std within epoch")
    if evals:
        ax.plot([r["epoch"] for r in evals], [_num(r["eval_reward_mean"]) for r in evals], "o-", color="#2ca02c",
                ms=3, label="held-out reward (deterministic sampler)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def fig_heatmap(epochs: Sequence[int], mat: np.ndarray, title: str, cbar: str, log: bool = False, ax=None):
    """Epoch (rows) × sampling step (columns) heat map; NaN (untrained steps) shown blank."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
    data = np.array(mat, dtype=float)
    if log and not np.any(np.nan_to_num(data) > 0):  # all zero (on-policy only): a linear scale shows that
        log = False
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.log10(np.where(data > 0, data, np.nan))
    if data.size == 0 or np.all(np.isnan(data)):
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        n_ep, n_st = data.shape
        e0, e1 = (min(epochs), max(epochs)) if epochs else (0, n_ep)
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", origin="lower", cmap="viridis",
                       interpolation="nearest", extent=(-0.5, n_st - 0.5, e0 - 0.5, e1 + 0.5))
        cb = ax.figure.colorbar(im, ax=ax)
        cb.set_label(("log10 " if log else "") + cbar, fontsize=8)
    ax.set_xlabel("sampling step (0 = noise)")
    ax.set_ylabel("epoch")
    ax.set_title(title, fontsize=10)
    if own:
        ax.figure.tight_layout()
        return ax.figure
    return ax


def fig_credit(table: dict, ax=None, title: str | None = None):
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
    steps = table.get("steps", [])
    idx = list(range(len(steps)))
    ax.plot(idx, [s["native"] for s in steps], "o-", ms=3, color="#d62728", label="native c/s (baselines)")
    ax.plot(idx, [s["pcpo"] for s in steps], "s--", ms=3, color="#1f77b4", label="PCPO ζ·Δt/ΣΔt")
    ax.set_xlabel("sampling step (0 = noise)")
    ax.set_ylabel("step weight")
    s = table.get("sampler", {})
    ax.set_title(title or f"{s.get('kind', '')} {s.get('num_steps', '')} steps, ζ = {table.get('zeta', math.nan):.3f}",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if own:
        ax.figure.tight_layout()
        return ax.figure
    return ax


def fig_gold(records: Sequence[dict]):
    """Gold metrics (accuracy, Fréchet distance, diversity) at the evaluation epochs, if logged."""
    evals = [r for r in records if any(k.startswith("gold_") for k in r)]
    keys = sorted({k for r in evals for k, v in r.items() if k.startswith("gold_") and isinstance(v, (int, float))})
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([r["epoch"] for r in evals], [_num(r.get(k)) for r in evals], "o-", ms=3)
        ax.set_title(k.removeprefix("gold_"), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- benchmark figures

def fig_bench_curves(curves: dict, key_label: str, target: float | None = None):
    """``curves[framework][objective] = (epochs, [seeds × epochs] array)``: mean ± band over seeds."""
    fws = list(curves)
    fig, axes = plt.subplots(1, len(fws), figsize=(4.6 * len(fws), 3.5), squeeze=False)
    for ax, fw in zip(axes[0], fws):
        for obj, (epochs, arr) in curves[fw].items():
            arr = np.asarray(arr, dtype=float)
            if arr.size == 0:
                continue
            m = np.nanmean(arr, axis=0)
            lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
            style = OBJECTIVE_STYLE.get(obj, {"label": obj})
            ax.plot(epochs, m, color=style.get("color"), label=f"{style['label']} (n={arr.shape[0]})")
            ax.fill_between(epochs, lo, hi, color=style.get("color"), alpha=0.15)
        if target is not None:
            ax.axhline(target, color="k", ls=":", lw=1, label="target")
        ax.set_title(fw, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_bench_heatmaps(mats: dict, title: str, cbar: str):
    """``mats[framework][objective] = (epochs, [E, N] mean matrix)``: grid of heat maps, shared colour scale per row."""
    fws = list(mats)
    objs = sorted({o for fw in fws for o in mats[fw]}, key=lambda o: list(OBJECTIVE_STYLE).index(o)
                  if o in OBJECTIVE_STYLE else 99)
    fig, axes = plt.subplots(len(fws), len(objs), figsize=(3.8 * len(objs), 2.8 * len(fws)), squeeze=False)
    for i, fw in enumerate(fws):
        vals = [m for o in objs if o in mats[fw] for m in [np.asarray(mats[fw][o][1], dtype=float)] if m.size]
        vmax = max((np.nanmax(v) for v in vals if not np.all(np.isnan(v))), default=1.0)
        for j, obj in enumerate(objs):
            ax = axes[i][j]
            if obj not in mats[fw] or np.asarray(mats[fw][obj][1]).size == 0:
                ax.axis("off")
                continue
            epochs, mat = mats[fw][obj]
            mat = np.asarray(mat, dtype=float)
            n_st = mat.shape[1]
            im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", origin="lower", cmap="viridis", vmin=0,
                           vmax=vmax if vmax > 0 else 1.0, interpolation="nearest",
                           extent=(-0.5, n_st - 0.5, min(epochs) - 0.5, max(epochs) + 0.5))
            ax.set_title(f"{fw} / {obj}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("epoch", fontsize=8)
            if j == len(objs) - 1:
                fig.colorbar(im, ax=ax).set_label(cbar, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def fig_bench_credit(tables: dict):
    """``tables[framework] = credit table``: native vs PCPO weights side by side."""
    fws = list(tables)
    fig, axes = plt.subplots(1, len(fws), figsize=(4.6 * len(fws), 3.2), squeeze=False)
    for ax, fw in zip(axes[0], fws):
        fig_credit(tables[fw], ax=ax, title=f"{fw}: ζ = {tables[fw].get('zeta', math.nan):.3f}")
    fig.tight_layout()
    return fig


def fig_bench_step_profile(mats: dict, ylabel: str = "clip fraction (mean over epochs and seeds)"):
    """``mats[framework][objective] = (epochs, [E, N])``: the per-step mean over epochs, one line per objective."""
    import warnings

    fws = list(mats)
    fig, axes = plt.subplots(1, len(fws), figsize=(4.6 * len(fws), 3.2), squeeze=False)
    for ax, fw in zip(axes[0], fws):
        for obj, (_, mat) in mats[fw].items():
            mat = np.asarray(mat, dtype=float)
            if mat.size == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                prof = np.nanmean(mat, axis=0)
            style = OBJECTIVE_STYLE.get(obj, {"label": obj})
            ax.plot(range(len(prof)), prof, "o-", ms=2.5, color=style.get("color"), label=style["label"])
        ax.set_title(fw, fontsize=10)
        ax.set_xlabel("sampling step (0 = noise)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
