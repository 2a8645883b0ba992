"""Figures shared by the CLI and the demo (matplotlib with the Agg backend)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ms_histogram(ms_sae: np.ndarray, ms_raw: np.ndarray | None = None, *, title: str = "") -> Any:
    """Histogram of MS of SAE neurons (and raw neurons), density-normalised; returns the
    figure. NaN scores (dead or constant neurons) are left out and counted in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, 1, 41)
    series = [("SAE neurons", ms_sae, "tab:blue")]
    if ms_raw is not None:
        series.append(("raw neurons", ms_raw, "tab:orange"))
    for name, ms, colour in series:
        ms = np.asarray(ms, np.float64)
        ok = ms[np.isfinite(ms)]
        undefined = ms.size - ok.size
        label = f"{name} (n={ok.size}" + (f", {undefined} undefined)" if undefined else ")")
        ax.hist(np.clip(ok, 0, 1), bins=bins, density=True, alpha=0.55, color=colour, label=label)
    ax.set_xlabel("Monosemanticity Score")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
