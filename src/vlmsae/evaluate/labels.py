"""Concept labels of a store's images: which concepts each image holds.

Concepts come in *sets* (a taxonomy level, an attribute, a CSV column); a concept is one
value of a set (``shape:circle``, ``genus:Aedes``, ``has_bill_shape:curved``). An image may
hold several concepts of one set (both emoji of a two-emoji scene, a multi-label column).

Sources (:func:`load_labels`): the toy world's truth (``toy``, or an exported split folder:
its ``attributes.csv``; every attribute a set); an image folder's classes (ImageFolder: one
set ``class``; iNaturalist 2021: one set per taxonomy level, kingdom to species; CUB: the
classes and, when the folder has them, the 312 binary attributes); a CSV
(:mod:`vlmsae.evaluate.labels_csv`). The labels are matched to the store's images by path;
an image of the store that the labels do not cover is refused, naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
    return os.path.realpath(os.fspath(path))


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


def toy_labels(store: ActivationStore, folder: Path | None = None) -> ConceptLabels:
    """The toy world's truth of the store's images, from an exported split folder (default:
    the store's own): one set per attribute, every value of the world a concept."""
    from vlmsae.toyworld.export import ATTRIBUTES_CSV, read_exported
    from vlmsae.toyworld.worlds import world_of_split

    folder = folder if folder is not None else split_folder(store)
    if folder is None or not (folder / ATTRIBUTES_CSV).is_file():
        where = f"{folder}" if folder is not None else f"the dataset of store {store.dir}"
        raise UserError(
            f"--labels toy needs an exported toy-world split, but {where} has no "
            f"{ATTRIBUTES_CSV}; cache the store from `vlmsae toyworld export` output or give "
            "--labels a folder or CSV"
        )
    world = world_of_split(folder)
    exported = read_exported(folder)
    rows = match_images(store, {_key(im.path): i for i, im in enumerate(exported)},
                        f"toy-world split {folder}")  # fmt: skip
    concepts = [world.concepts(exported[r].record) for r in rows]
    order = {a: world.attributes[a] for a in concepts[0]} if concepts else None
    return from_image_concepts(concepts, f"toy world {world.name} ({folder})", order)


def folder_labels(store: ActivationStore, folder: Path) -> ConceptLabels:
    """Classes of an image folder (its layout detected as ``vlmsae cache`` does): set
    ``class``; iNaturalist 2021: one set per taxonomy level; CUB: the classes and, when
    present, its binary attributes."""
    from vlmsae.data.images import TAXONOMY_LEVELS, detect_layout, load_dataset

    layout = detect_layout(folder)
    try:
        ds = load_dataset(folder, layout="auto")
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--labels {folder}: {e}") from e
    rows = match_images(store, {_key(p): i for i, p in enumerate(ds.paths)},
                        f"--labels {folder}")  # fmt: skip
    labels = [ds.labels[r] for r in rows]
    if ds.layout == "inat21":
        per_image = [dict(zip(TAXONOMY_LEVELS, ([v] for v in ds.taxonomy[c]), strict=True))
                     for c in labels]  # fmt: skip
        order = {lv: list(dict.fromkeys(t[i] for t in ds.taxonomy))
                 for i, lv in enumerate(TAXONOMY_LEVELS)}  # fmt: skip
    elif ds.layout == "flat" or not ds.classes:
        raise UserError(f"--labels {folder} has no class folders (layout {ds.layout})")
    else:
        per_image = [{"class": [ds.classes[c]]} for c in labels]
        order = {"class": list(ds.classes)}
    out = from_image_concepts(per_image, f"{ds.layout} classes of {folder}", order)
    if layout == "cub":
        from vlmsae.evaluate.labels_csv import cub_attributes

        extra = cub_attributes(folder, [ds.paths[r] for r in rows])
        if extra is not None:
            out = concat(out, extra)
    return out


def concat(a: ConceptLabels, b: ConceptLabels) -> ConceptLabels:
    """The concepts of ``a`` then those of ``b`` (same images)."""
    return ConceptLabels(a.sets + b.sets, a.values + b.values,
                         sp.hstack([a.present, b.present], format="csr"),
                         f"{a.source} + {b.source}")  # fmt: skip


def load_labels(store: ActivationStore, spec: str | None) -> ConceptLabels:
    """The labels ``--labels`` names for the store's images.

    ``spec``: ``toy`` (the toy world's truth of the store's split), an exported toy-world
    split folder, an image folder (ImageFolder / iNaturalist 2021 / CUB), a ``.csv`` file,
    or None: the store's own dataset folder (its truth when it is a toy-world split, else
    its classes).
    """
    from vlmsae.toyworld.export import ATTRIBUTES_CSV

    if spec is None:
        folder = split_folder(store)
        if folder is None:
            raise UserError(
                f"store {store.dir} records no dataset folder that exists, so there is no "
                "label to evaluate against; give --labels (toy, a folder or a CSV)"
            )
        spec = "toy" if (folder / ATTRIBUTES_CSV).is_file() else str(folder)
    if spec == "toy":
        return toy_labels(store)
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        from vlmsae.evaluate.labels_csv import csv_labels

        return csv_labels(store, path)
    if path.is_dir():
        loader: Callable[..., ConceptLabels] = folder_labels
        if (path / ATTRIBUTES_CSV).is_file():
            loader = toy_labels
        return loader(store, path)
    raise UserError(
        f"--labels {spec}: expected 'toy', an image folder or a .csv file, and no such "
        f"{'file' if path.suffix else 'folder'} exists"
    )
