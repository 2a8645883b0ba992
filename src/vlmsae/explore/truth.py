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


CONCEPT_SHARE = 0.8
"""A concept is a neuron's when at least this share of its top images hold it."""


class Concepts(NamedTuple):
    """The ground-truth concepts of each neuron's top images."""

    name: list[str | None]
    """The attribute values at least ``CONCEPT_SHARE`` of the top images hold, e.g.
    ``"diamond orange large"`` (the family is left out when the shape names it); None where
    no value is that common or the neuron has no top images."""
    purity: np.ndarray
    """``float64 [S]`` the largest share of the top images holding one attribute value
    (label purity; NaN without top images)."""


def dominant_concepts(top_SK: np.ndarray, labels: dict[str, np.ndarray]) -> Concepts:
    """The concepts and the label purity of every neuron's top images."""
    from vlmsae.toyworld.world import ATTRIBUTES

    names: list[str | None] = []
    purity = np.full(len(top_SK), np.nan)
    for s, row in enumerate(top_SK):
        row = row[row >= 0]
        if not row.size:
            names.append(None)
            continue
        strong = []
        for attr, per_image in labels.items():
            counts = np.bincount(per_image[row])
            purity[s] = max(np.nan_to_num(purity[s], nan=0.0), counts.max() / row.size)
            if counts.max() / row.size >= CONCEPT_SHARE:
                strong.append((attr, ATTRIBUTES[attr][int(counts.argmax())]))
        if any(a == "shape" for a, _ in strong):
            strong = [(a, v) for a, v in strong if a != "family"]
        names.append(" ".join(v for _, v in strong) or None)
    return Concepts(names, purity)


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
