"""Grids of each neuron's top images with its MS, like the paper's figures.

Unreadable or missing images become grey tiles (counted), never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmsae.data.sources import open_image
from vlmsae.report.figures import save_figure

log = logging.getLogger(__name__)


def _tile(path: str | None, size: int) -> tuple[np.ndarray, bool]:
    if path is None:
        return np.full((size, size, 3), 200, np.uint8), False
    decoded = open_image(path)  # a file, a .tar member or a dataset row (images.jsonl keys)
    if decoded.image is None:
        log.debug("unreadable image %s: %s", path, decoded.error)
        return np.full((size, size, 3), 160, np.uint8), False
    im = decoded.image
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((size, size))), True


def tile_panel(paths: Sequence[str | Path | None], side: int, tile: int) -> tuple[np.ndarray, int]:
    """A ``side × side`` square of ``tile``-pixel tiles (``[H, W, 3]`` uint8, white where no
    image): the images of ``paths`` row by row, centre-cropped; ``None`` and unreadable
    files become grey tiles. Returns the panel and the number of images drawn."""
    panel = np.full((side * tile, side * tile, 3), 255, np.uint8)
    drawn = 0
    for j, p in enumerate(paths[: side * side]):
        arr, ok = _tile(None if p is None else str(p), tile)
        drawn += int(ok)
        r, c = divmod(j, side)
        panel[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = arr
    return panel, drawn


def neuron_grid(
    path: str | Path,
    neurons: Sequence[int],
    top_idx_Kk: np.ndarray,
    image_paths: Sequence[str],
    *,
    ms: np.ndarray | None = None,
    ms_label: str = "MS",
    n_images: int = 16,
    tile: int = 128,
    columns: int = 4,
    dpi: int = 300,
) -> dict[str, int]:
    """One panel per neuron (``n_images`` top images in a square grid, titled with the neuron
    id and MS, called ``ms_label``: name the embedder, e.g. ``"MS (dinov2-base)"``), panels
    side by side in rows of ``columns``; written as PNG (``dpi``: 300
    prints at the figure's size) and as SVG and PDF beside it. Returns counts of drawn
    tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(neurons):
        raise ValueError("no neurons to draw")
    side = int(np.ceil(np.sqrt(n_images)))
    n_rows = int(np.ceil(len(neurons) / columns))
    n_cols = min(columns, len(neurons))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.6 * n_rows))
    axes = np.atleast_1d(axes).ravel()
    counts = {"drawn": 0, "unreadable": 0}
    for ax, k in zip(axes, neurons, strict=False):
        paths = [image_paths[i] if 0 <= i < len(image_paths) else None
                 for i in top_idx_Kk[k][:n_images]]  # fmt: skip
        panel, drawn = tile_panel(paths, side, tile)
        counts["drawn"] += drawn
        counts["unreadable"] += sum(p is not None for p in paths) - drawn
        ax.imshow(panel)
        score = "" if ms is None or np.isnan(ms[k]) else f"  {ms_label} {ms[k]:.3f}"
        ax.set_title(f"neuron {k}{score}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)  # PNG at print resolution, and SVG / PDF
    if counts["unreadable"]:
        log.warning("%d top images could not be read (grey tiles)", counts["unreadable"])
    return counts


def select_neurons(
    ms: np.ndarray | None,
    *,
    ids: Sequence[int] | None = None,
    top_n: int | None = None,
    group: int | None = None,
    group_sizes: Sequence[int] | None = None,
    alive_K: np.ndarray | None = None,
) -> list[int]:
    """Neurons to draw: explicit ``ids``, else the ``top_n`` best MS (inside Matryoshka
    ``group`` when given)."""
    if ids:
        return [int(i) for i in ids]
    if ms is None:
        raise ValueError("choosing neurons by MS rank needs scores (--scores)")
    lo, hi = 0, len(ms)
    if group is not None:
        if not group_sizes or not 0 <= group < len(group_sizes):
            raise ValueError(f"group {group} needs group sizes with more than {group} groups")
        lo = int(sum(group_sizes[:group]))
        hi = lo + int(group_sizes[group])
    cand = np.arange(lo, hi)
    score = np.nan_to_num(ms[lo:hi], nan=-np.inf)
    if alive_K is not None:
        score = np.where(alive_K[lo:hi], score, -np.inf)
    order = np.argsort(-score, kind="stable")[: top_n or 8]
    return [int(cand[o]) for o in order if np.isfinite(score[o])]
