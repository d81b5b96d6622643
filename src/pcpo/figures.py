"""Every picture pcpo draws: image grids (PIL) and the figures of runs, ``pcpo report``, ``pcpo bench``
and ``pcpo credit`` (matplotlib, Agg), returned as PNG bytes or saved.

Figures take plain records (the dicts of ``metrics.jsonl``) so they can be drawn from a finished or a
running run without touching the model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

OBJECTIVE_STYLE = {
    "clipped": dict(color="#d62728", label="clipped ratio (baseline)"),
    "log_hinge": dict(color="#ff7f0e", label="log-hinge (PCPO-base)"),
    "pcpo": dict(color="#1f77b4", label="PCPO"),
}


#: which way is better, by a metric's name: (substring, arrow), first match wins
_DIRECTIONS = (("frechet", "↓"), ("fid", "↓"), ("distance", "↓"), ("loss", "↓"), ("clipfrac", "↓"),
               ("clip_frac", "↓"), ("clip fraction", "↓"), ("kl", "↓"), ("nonfinite", "↓"), ("time", "↓"), ("_std", ""),
               ("reward", "↑"), ("accuracy", "↑"), ("diversity", "↑"), ("score", "↑"), ("aesthetic", "↑"))
#: the legend that goes with :func:`metric_label`
DIRECTION_LEGEND = "↑ higher is better, ↓ lower is better"


def metric_direction(key: str) -> str:
    """``"↑"`` (higher is better), ``"↓"`` (lower is better) or ``""`` (neither) for a metric name."""
    k = key.lower()
    return next((arrow for sub, arrow in _DIRECTIONS if sub in k), "")


def metric_label(key: str) -> str:
    """``key`` with its direction arrow, e.g. ``gold_accuracy ↑``."""
    arrow = metric_direction(key)
    return f"{key} {arrow}" if arrow else key


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
    # styled objectives first, then the other arms in the order given (a set's order changes between processes)
    objs = sorted(dict.fromkeys(o for fw in fws for o in mats[fw]), key=lambda o: list(OBJECTIVE_STYLE).index(o)
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


def fig_bench_time_to_target(rows: dict, budget: int, passes: bool = True):
    """``rows[framework][arm] = {"epochs": (m, lo, hi), "wall_s": (m, lo, hi) | None, "passes": ... | None,
    "censored": k, "n": n}``: mean and 95 % interval over seeds of the cost to the target, one panel per framework
    and cost (epochs, wall-clock minutes, model passes); censored runs count as the budget (marked)."""
    fws = list(rows)
    kinds = [("epochs", "epochs to target", 1.0), ("wall_s", "wall-clock to target (min, training only)", 60.0)]
    if passes:
        kinds.append(("passes", "model passes to target (thousands)", 1000.0))
    height = sum(0.26 * len(r) + 1.1 for r in rows.values()) + 0.5
    fig, axes = plt.subplots(len(fws), len(kinds), figsize=(4.4 * len(kinds), height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(rows[fw]) + 2 for fw in fws]})
    for i, fw in enumerate(fws):
        arms = list(rows[fw])
        for j, (key, label, div) in enumerate(kinds):
            ax = axes[i][j]
            for y, arm in enumerate(reversed(arms)):
                r = rows[fw][arm]
                v = r.get(key)
                if not v or v[0] is None:
                    continue
                m = v[0] / div
                lo, hi = (x / div if x is not None and math.isfinite(x) else m for x in v[1:3])  # n=1: no interval
                style = OBJECTIVE_STYLE.get(arm, {"label": arm})
                ax.plot([lo, hi], [y, y], color=style.get("color", "#444444"), lw=2)
                ax.plot([m], [y], "o", color=style.get("color", "#444444"), ms=4)
                if r.get("censored"):
                    ax.annotate(f"{r['censored']}/{r['n']} censored", (hi, y), xytext=(4, -3),
                                textcoords="offset points", fontsize=6, color="#7f7f7f")
            if key == "epochs":
                ax.axvline(budget, color="k", ls=":", lw=1)
            ax.set_yticks(range(len(arms)), list(reversed(arms)), fontsize=7)
            ax.set_xlabel(label, fontsize=8)
            ax.grid(alpha=0.3, axis="x")
            ax.set_title(fw, fontsize=9)
    fig.suptitle("cost to the target: mean and 95 % t-interval over seeds (lower is better; dotted: the epoch "
                 "budget)", fontsize=9)
    fig.tight_layout()
    return fig


# ---- image grids ----------------------------------------------------------------------------------

def to_pil(img: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] → RGB image."""
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def make_grid(images: torch.Tensor, nrow: int, labels: Sequence[str] | None = None, scale: int = 2,
              pad: int = 2, col_labels: Sequence[str] | None = None) -> Image.Image:
    """Grid with ``nrow`` images per row (row r labelled ``labels[r]``, in full, vertically centred on its
    row), each upscaled ``scale``× (nearest); the label column is as wide as the longest label.
    ``col_labels`` heads the columns: one per column, or one per block of equal columns (e.g. one IRG
    scale γ over each block of images), centred over its block."""
    n = images.shape[0]
    rows = (n + nrow - 1) // nrow
    h, w = images.shape[2] * scale, images.shape[3] * scale
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lw = (max(int(probe.textlength(str(t), font=font)) for t in labels) + 12) if labels else 0
    th = 0
    if labels or col_labels:
        box = probe.textbbox((0, 0), "Ayg|γ", font=font)
        th = box[3] - box[1]
    head = th + 8 if col_labels else 0
    grid = Image.new("RGB", (lw + nrow * (w + pad) + pad, head + rows * (h + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    for k in range(n):
        r, c = divmod(k, nrow)
        tile = to_pil(images[k]).resize((w, h), Image.NEAREST)
        grid.paste(tile, (lw + pad + c * (w + pad), head + pad + r * (h + pad)))
    if labels:
        for r in range(min(rows, len(labels))):
            draw.text((6, head + pad + r * (h + pad) + (h - th) // 2), str(labels[r]), fill=(220, 220, 220),
                      font=font)
    if col_labels:
        if nrow % len(col_labels):
            raise ValueError(f"col_labels: {len(col_labels)} labels do not divide the {nrow} columns")
        span = nrow // len(col_labels)
        for j, text in enumerate(col_labels):
            x0 = lw + pad + j * span * (w + pad)
            width = span * (w + pad) - pad
            tw = int(probe.textlength(str(text), font=font))
            draw.text((x0 + max(0, (width - tw) // 2), 4), str(text), fill=(240, 240, 240), font=font)
            if j:
                draw.line([(x0 - pad, 0), (x0 - pad, grid.height)], fill=(200, 200, 200), width=1)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, labels: Sequence[str] | None = None,
              scale: int = 2, col_labels: Sequence[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow, labels, scale=scale, col_labels=col_labels).save(path)
    return path


# ---- run files ------------------------------------------------------------------------------------

def plot_credit(table: dict, path: str) -> None:
    """Native vs PCPO step weights against the step index (a run's ``credit.png``, ``pcpo credit --plot``)."""
    fig = fig_credit(table)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(records: list[dict], path: str) -> None:
    """Training reward (mean ± std), held-out reward and clip fraction against epoch (``curves.png``)."""
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_reward_mean" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    ax = axes[0]
    if train:
        e = [r["epoch"] for r in train]
        m = [_num(r["reward_mean"]) for r in train]
        s = [_num(r.get("reward_std", 0.0)) for r in train]
        ax.plot(e, m, label="training reward")
        ax.fill_between(e, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    if evals:
        ax.plot([r["epoch"] for r in evals], [_num(r["eval_reward_mean"]) for r in evals], "o-",
                label="held-out reward (ODE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward (higher is better)")
    if train or evals:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax = axes[1]
    clip = [r for r in train if isinstance(r.get("clipfrac"), (int, float))]
    if clip:
        ax.plot([r["epoch"] for r in clip], [r["clipfrac"] for r in clip], label="clip fraction")
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of clipped (sample, step) pairs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
