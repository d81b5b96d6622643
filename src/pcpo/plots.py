"""Matplotlib figures (headless, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_credit(table: dict, path: str) -> None:
    """Native vs PCPO step weights against the step index."""
    steps = table["steps"]
    idx = list(range(len(steps)))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(idx, [s["native"] for s in steps], "o-", label="native  c/s")
    ax.plot(idx, [s["pcpo"] for s in steps], "s--", label="PCPO  ζ·Δt/ΣΔt")
    ax.set_xlabel("sampling step (0 = noise)")
    ax.set_ylabel("step weight")
    s = table.get("sampler", {})
    ax.set_title(f"{s.get('kind', '')} {s.get('num_steps', '')} steps, ζ = {table['zeta']:.3f}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training(records: list[dict], path: str) -> None:
    """Training reward (mean ± std), held-out reward and clip fraction against epoch."""
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_reward_mean" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    ax = axes[0]
    if train:
        e = [r["epoch"] for r in train]
        m = [r["reward_mean"] for r in train]
        s = [r.get("reward_std", 0.0) for r in train]
        ax.plot(e, m, label="training reward")
        ax.fill_between(e, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    if evals:
        ax.plot([r["epoch"] for r in evals], [r["eval_reward_mean"] for r in evals], "o-", label="held-out reward (ODE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.legend()
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
