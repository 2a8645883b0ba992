"""Concept labels of a store's images: which concepts each image holds.

Concepts come in *sets* (a taxonomy level, an attribute, a CSV column); a concept is one
value of a set (``shape:circle``, ``genus:Aedes``, ``has_bill_shape:curved``). An image may
hold several concepts of one set (both emoji of a two-emoji scene, a multi-label column).
Labels are matched to a store's images by path (:func:`match_images`); an image of the
store that the labels do not cover is refused, naming it. The sources are read in
:mod:`vlmsae.evaluate.label_sources` and :mod:`vlmsae.evaluate.labels_csv`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from vlmsae.core.errors import UserError

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore


@dataclass(frozen=True)
class ConceptLabels:
    """Which of ``C`` concepts each of ``N`` images holds."""

    sets: tuple[str, ...]
    """Set of each concept (``shape``, ``species``, ``class``), ``[C]``."""
    values: tuple[str, ...]
    """Value of each concept within its set (``circle``), ``[C]``."""
    present: sp.csr_matrix
    """``bool [N, C]``: image ``n`` holds concept ``c``."""
    source: str
    """Where the labels come from (shown in the summary)."""

    def __post_init__(self) -> None:
        if not len(self.sets) == len(self.values) == self.present.shape[1]:
            raise ValueError("sets, values and the columns of present must have one length")

    @property
    def names(self) -> list[str]:
        """``set:value`` of every concept."""
        return [f"{s}:{v}" for s, v in zip(self.sets, self.values, strict=True)]

    @property
    def n_images(self) -> int:
        return int(self.present.shape[0])

    def rows(self, index: np.ndarray) -> ConceptLabels:
        """The labels of the images ``index`` (in that order)."""
        return ConceptLabels(self.sets, self.values, self.present[index], self.source)

    def columns(self, keep: np.ndarray) -> ConceptLabels:
        """The concepts where ``keep`` (bool ``[C]``) holds."""
        idx = np.flatnonzero(keep)
        return ConceptLabels(
            tuple(self.sets[i] for i in idx),
            tuple(self.values[i] for i in idx),
            sp.csr_matrix(self.present[:, idx]),
            self.source,
        )


def from_image_concepts(
    per_image: Sequence[dict[str, Sequence[str]]],
    source: str,
    order: dict[str, Sequence[str]] | None = None,
) -> ConceptLabels:
    """Labels from ``{set: values held}`` per image; concepts ordered by ``order`` (set ->
    every value, in order) where given, else sets and values as first met."""
    index: dict[tuple[str, str], int] = {}
    for a, vals in (order or {}).items():
        for v in vals:
            index.setdefault((a, str(v)), len(index))
    rows, cols = [], []
    for n, concepts in enumerate(per_image):
        for a, vals in concepts.items():
            for v in vals:
                rows.append(n)
                cols.append(index.setdefault((a, str(v)), len(index)))
    present = sp.csr_matrix(
        (np.ones(len(rows), bool), (np.array(rows, np.int64), np.array(cols, np.int64))),
        shape=(len(per_image), len(index)),
    )
    present.sum_duplicates()
    keys = list(index)
    return ConceptLabels(tuple(k[0] for k in keys), tuple(k[1] for k in keys), present, source)


def _key(path: str | os.PathLike[str]) -> str:
    """A file by its real path; a source key (``tar:``, ``hf:``...) as it is."""
    from vlmsae.data.locate import is_key

    text = os.fspath(path)
    return text if is_key(text) else os.path.realpath(text)


def match_images(
    store: ActivationStore, known: dict[str, int], what: str, hint: str = ""
) -> np.ndarray:
    """``int64 [N]`` the row of ``known`` (real path -> row) of each of the store's images;
    refuses a store image that ``known`` lacks (labels of other images)."""
    images = store.images
    if not images:
        raise UserError(
            f"store {store.dir} lists no image paths (images.txt), so its images cannot be "
            f"matched to {what}; re-cache it with this vlmsae"
        )
    rows = np.array([known.get(_key(p), -1) for p in images], np.int64)
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise UserError(
            f"{what} does not label {missing.size} of the {len(images)} images of store "
            f"{store.dir} (first: {images[int(missing[0])]}); give labels of the store's "
            f"images{hint}"
        )
    return rows


def split_folder(store: ActivationStore) -> Path | None:
    """The folder a store's images were listed from (dataset root / split), if it exists."""
    root, split = store.manifest.get("dataset_root"), store.manifest.get("split")
    if root is None:
        return None
    folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
    return folder if folder.is_dir() else None


def concat(a: ConceptLabels, b: ConceptLabels) -> ConceptLabels:
    """The concepts of ``a`` then those of ``b`` (same images)."""
    return ConceptLabels(a.sets + b.sets, a.values + b.values,
                         sp.hstack([a.present, b.present], format="csr"),
                         f"{a.source} + {b.source}")  # fmt: skip
