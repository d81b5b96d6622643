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
