"""Paper-style figures (matplotlib, Agg backend): MS histograms of SAE vs raw neurons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmsae.core.io import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VECTOR_FORMATS = ("svg", "pdf")
"""Every figure is also written in these formats beside its PNG (for papers)."""


def save_figure(fig, path: str | Path, *, dpi: int | None = None, **kwargs) -> Path:
    """Write ``fig`` to ``path`` (PNG) and beside it as SVG and PDF, each atomically, and
    close it. ``kwargs`` go to ``savefig`` (e.g. ``bbox_inches="tight"``)."""
    path = Path(path)
    for fmt in ("png", *VECTOR_FORMATS):
        target = path if fmt == "png" else path.with_suffix(f".{fmt}")
        atomic_write(target, lambda p, fmt=fmt: fig.savefig(p, format=fmt, dpi=dpi, **kwargs))
    pyplot().close(fig)
    return path


def ms_histogram(
    path: str | Path,
    scores: dict[str, np.ndarray],
    *,
    bins: int = 50,
    title: str = "Monosemanticity Score",
    embedder: str | None = None,
) -> Path:
    """Histogram PNG of MS per set of neurons (e.g. ``{"SAE": ms, "raw": ms_raw}``),
    densities so that sets of different sizes compare; undefined scores are left out.
    ``embedder`` names the embedding MS was measured with on the axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=150)
    edges = np.linspace(-0.2, 1.0, bins + 1)
    finite = [s[~np.isnan(s)] for s in scores.values() if np.any(~np.isnan(s))]
    if finite:
        lo = min(-0.2, min(float(f.min()) for f in finite))
        edges = np.linspace(lo, 1.0, bins + 1)
    for name, ms in scores.items():
        ok = ms[~np.isnan(ms)]
        if not ok.size:  # a set with no defined score: named in the legend, no bars
            ax.plot([], [], label=f"{name} (none)")
            continue
        ax.hist(
            ok,
            bins=edges,
            density=True,
            alpha=0.55,
            label=f"{name} (n={ok.size}, mean {ok.mean():.3f})",
        )
    ax.set_xlabel(f"MS ({embedder} embedding)" if embedder else "MS")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
