"""Ground truth of the toy world for the browser and the label evaluation.

A store cached from an exported toy-world split (its manifest names the dataset root and
split, whose folder holds ``attributes.csv``) has known concepts per image; everywhere
else these functions return None and nothing is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


def toy_labels(store: Any) -> dict[str, np.ndarray] | None:
    """Integer value per attribute for every image of ``store`` (``{attribute: [N]}``), or
    None when the store's images are not an exported toy-world split."""
    from vlmsae.toyworld.export import ATTRIBUTES_CSV, read_exported
    from vlmsae.toyworld.world import ATTRIBUTES

    root, split = store.manifest.get("dataset_root"), store.manifest.get("split")
    images = store.images
    if not images or root is None:
        return None
    folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
    if not (folder / ATTRIBUTES_CSV).is_file():
        return None
    by_path = {str(im.path.resolve()): im.record for im in read_exported(folder)}
    records = [by_path.get(str(Path(p).resolve())) for p in images]
    if any(r is None for r in records):
        return None
    return {
        a: np.array([values.index(getattr(r, a)) for r in records], np.int64)
        for a, values in ATTRIBUTES.items()
    }


class Concepts(NamedTuple):
    """The dominant ground-truth concept of each neuron's top images."""

    name: list[str | None]
    """``attribute=value`` shared by the largest share of the top images (None: no images)."""
    value: list[str | None]
    """Just the value (e.g. ``red``), the word a label should be."""
    purity: np.ndarray
    """``float64 [S]`` that share (NaN without top images)."""


def dominant_concepts(top_SK: np.ndarray, labels: dict[str, np.ndarray]) -> Concepts:
    """For each neuron, the attribute value most of its top images share (ties: the first
    attribute in the world's order), and the share itself (label purity)."""
    from vlmsae.toyworld.world import ATTRIBUTES

    names: list[str | None] = []
    values: list[str | None] = []
    purity = np.full(len(top_SK), np.nan)
    for s, row in enumerate(top_SK):
        row = row[row >= 0]
        if not row.size:
            names.append(None)
            values.append(None)
            continue
        best = (-1.0, "", "")
        for attr, per_image in labels.items():
            counts = np.bincount(per_image[row])
            share = counts.max() / row.size
            if share > best[0]:
                best = (share, attr, ATTRIBUTES[attr][int(counts.argmax())])
        purity[s] = best[0]
        names.append(f"{best[1]}={best[2]}")
        values.append(best[2])
    return Concepts(names, values, purity)


def shared_values(top_K: np.ndarray, labels: dict[str, np.ndarray], share: float) -> set[str]:
    """Attribute values held by at least ``share`` of one neuron's top images."""
    from vlmsae.toyworld.world import ATTRIBUTES

    row = top_K[top_K >= 0]
    out: set[str] = set()
    if not row.size:
        return out
    for attr, per_image in labels.items():
        counts = np.bincount(per_image[row], minlength=len(ATTRIBUTES[attr]))
        out.update(ATTRIBUTES[attr][i] for i in np.flatnonzero(counts / row.size >= share))
    return out
