"""Per-neuron cards as PNG (with SVG / PDF beside), drawn from a built site's data.

A card holds what the neuron page leads with: the neuron's id and label, its MS with the
statistic's n_active, its Matryoshka group, how often it fires, and its top images (a 4×4
grid) with their activations. Cards are drawn from the site (``data/index.js`` and the
neuron shards), so ``vlmsae explore --out SITE --cards 3,17`` also works on a site built
before, and the card matches the page. The page draws the same card on a canvas
("Download PNG").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from vlmsae.core.errors import UserError

INDEX_PREFIX = "window.VLMSAE_INDEX = "


def _site_text(path: Path) -> str:
    """The text of a site file, checked against the site's manifest where it has one
    (:mod:`vlmsae.core.outputs`: not a file of another site, not an interrupted build)."""
    from vlmsae.core.outputs import MANIFEST, read_output_bytes

    for site in list(path.parents)[:3]:
        if (site / MANIFEST).is_file():
            rel = path.relative_to(site).as_posix()
            return read_output_bytes(site, rel, what=f"the site {site}").decode("utf-8")
    return path.read_text(encoding="utf-8")


def _js_payload(path: Path, prefix: str) -> Any:
    text = _site_text(path).strip()
    if not text.startswith(prefix) or not text.endswith(";"):
        raise UserError(f"{path} is not a data file of `vlmsae explore`; rebuild the site")
    body = text[len(prefix) : -1]
    return json.loads(body[:-1] if body.endswith(")") else body)


def read_index(site_dir: Path) -> dict[str, Any]:
    """The site's index (``meta``, ``columns``, ``images``)."""
    path = Path(site_dir) / "data" / "index.js"
    if not path.is_file():
        raise UserError(
            f"{path} not found: --out must be a site written by `vlmsae explore` "
            "(give --sae and --activations to build it)"
        )
    return _js_payload(path, INDEX_PREFIX)


def read_neuron(site_dir: Path, index: dict[str, Any], neuron: int) -> dict[str, Any]:
    """The page record of ``neuron`` (top images, histogram, neighbours, steering)."""
    n, size = index["meta"]["n_neurons"], index["meta"]["shard_size"]
    if not 0 <= neuron < n:
        raise UserError(f"no neuron {neuron} in this site: its SAE has {n} (ids 0..{n - 1})")
    shard = neuron // size
    path = Path(site_dir) / "data" / "neurons" / f"{shard:05d}.js"
    if not path.is_file():
        raise UserError(f"{path} not found: the site is incomplete; rebuild it")
    records = _js_payload(path, f"vlmsaeShard({shard}, ")
    return records[neuron - shard * size]


def _fmt(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if digits else f"{int(v)}"


def card_lines(index: dict[str, Any], neuron: int) -> tuple[str, str]:
    """Title and statistics line of a card (the page's canvas card writes the same)."""
    cols, meta = index["columns"], index["meta"]

    def col(name: str) -> Any:
        return cols[name][neuron] if name in cols else None

    title = f"neuron {neuron}" + (f" — {col('label')}" if col("label") else "")
    parts = []
    if "ms" in cols:
        n_act = col("ms_n_active")
        first = [m for m in meta.get("ms") or [] if m.get("column") == "ms"]
        name = f"MS ({first[0]['embedder']})" if first else "MS"
        parts.append(f"{name} {_fmt(col('ms'), 3)}" + (f" (n_active {_fmt(n_act, 0)})"
                                                   if n_act is not None else ""))  # fmt: skip
    if len(meta.get("group_sizes") or []) > 1:
        parts.append(f"group {_fmt(col('group'), 0)}")
    parts.append(f"active on {_fmt(col('n_active'), 0)} of {meta['n_images']} images")
    parts.append(f"max {_fmt(col('max_act'), 3)}")
    return title, " · ".join(parts)


def write_card(
    site_dir: str | Path,
    neuron: int,
    path: str | Path,
    *,
    index: dict[str, Any] | None = None,
    tile: int = 160,
    dpi: int = 300,
) -> dict[str, int]:
    """Draw the card of ``neuron`` from the site in ``site_dir`` to ``path`` (PNG at
    ``dpi``, and SVG / PDF beside it). Returns ``{"tiles": top images placed, "drawn":
    images read, "unreadable": ...}``."""
    from vlmsae.report.figures import pyplot, save_figure
    from vlmsae.report.grid import tile_panel

    site_dir = Path(site_dir)
    index = index if index is not None else read_index(site_dir)
    rec = read_neuron(site_dir, index, neuron)
    top = rec["top"][:16]
    urls = [index["images"][img] for img, _ in top]
    paths = [None if u is None else site_dir / unquote(u) for u in urls]
    side = 4
    panel, drawn = tile_panel(paths, side, tile)
    title, stats = card_lines(index, neuron)
    plt = pyplot()
    fig = plt.figure(figsize=(4.0, 4.6))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 * 4.0 / 4.6))
    ax.imshow(panel, interpolation="nearest")
    for j, (_, act) in enumerate(top):
        r, c = divmod(j, side)
        ax.text(c * tile + 6, (r + 1) * tile - 8, f"{act:.3g}", fontsize=5.5, color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.2, "linewidth": 0})  # fmt: skip
    ax.axis("off")
    fig.text(0.03, 0.965, title, fontsize=9, weight="bold", va="top")
    fig.text(0.03, 0.915, stats, fontsize=5.8, va="top")
    if not top:
        ax.text(side * tile / 2, side * tile / 2, "never active on these images",
                ha="center", fontsize=8)  # fmt: skip
    save_figure(fig, path, dpi=dpi)
    return {"tiles": len(top), "drawn": drawn, "unreadable": len(top) - drawn}


def parse_ids(text: str, option: str) -> list[int]:
    """``"3,17, 40"`` → ``[3, 17, 40]``; anything else is a user error naming ``option``."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0:
        raise UserError(f"{option} takes neuron ids separated by commas (e.g. 3,17), got {text!r}")
    return ids


def write_cards(site_dir: str | Path, neurons: Sequence[int], out_dir: str | Path) -> list[Path]:
    """``out_dir/neuron-<id>.png`` (+ .svg, .pdf) for every neuron; returns the PNG paths."""
    site_dir, out_dir = Path(site_dir), Path(out_dir)
    index = read_index(site_dir)
    for n in neurons:  # all ids checked before any card is drawn
        read_neuron(site_dir, index, n)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(5, math.ceil(math.log10(max(index["meta"]["n_neurons"], 1) + 1)))
    paths = []
    for n in neurons:
        paths.append(out_dir / f"neuron-{n:0{width}d}.png")
        write_card(site_dir, n, paths[-1], index=index)
    return paths
