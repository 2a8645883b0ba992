"""Where ``--labels`` reads concepts from (:func:`load_labels`).

The toy world's truth (``toy``, or an exported split folder: its ``attributes.csv``; every
attribute a set); an image folder's classes (ImageFolder: one set ``class``; iNaturalist
2021: one set per taxonomy level, kingdom to species; CUB: the classes and, when the folder
has them, the 312 binary attributes); a Hugging Face dataset, Parquet files or WebDataset
shards (``hf:ORG/NAME``, ...: every ``ClassLabel`` column a set, or the label columns the
store was cached with); a CSV (:mod:`vlmsae.evaluate.labels_csv`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vlmsae.core.errors import UserError
from vlmsae.data.sources import source_kind
from vlmsae.evaluate.labels import (
    ConceptLabels,
    _key,
    concat,
    from_image_concepts,
    match_images,
    split_folder,
)
from vlmsae.evaluate.labels_csv import csv_labels, cub_attributes

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore


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
        extra = cub_attributes(folder, [ds.paths[r] for r in rows])
        if extra is not None:
            out = concat(out, extra)
    return out


def source_labels(store: ActivationStore, spec: str) -> ConceptLabels:
    """The label columns of a Hugging Face / Parquet / WebDataset source (one set per column:
    every ``ClassLabel`` column, else the columns the store was cached with)."""
    from vlmsae.data.sources import open_source

    recorded = store.manifest.get("data_source") or {}
    columns = recorded.get("label_columns") or ()
    kind = recorded.get("kind")
    ds = open_source(spec, store.manifest.get("split"),
                     label_columns=("*",) if kind != "webdataset" else columns)  # fmt: skip
    if not ds.label_sets:
        raise UserError(f"--labels {spec}: the source has no label column (ClassLabel, .cls)")
    rows = match_images(store, {_key(k): i for i, k in enumerate(ds.keys)}, f"--labels {spec}")
    per_image = [
        {name: [classes[labels[r]]] if labels[r] >= 0 else [] for name, (labels, classes) in
         ds.label_sets.items()}
        for r in rows
    ]  # fmt: skip
    order = {name: list(classes) for name, (_, classes) in ds.label_sets.items()}
    return from_image_concepts(per_image, f"{ds.layout} labels of {spec}", order)


def load_labels(store: ActivationStore, spec: str | None) -> ConceptLabels:
    """The labels ``--labels`` names for the store's images.

    ``spec``: ``toy`` (the toy world's truth of the store's split), an exported toy-world
    split folder, an image folder (ImageFolder / iNaturalist 2021 / CUB; a dataset root
    holding the store's split folder means that folder), a ``.csv`` file,
    or None: the store's own dataset folder (its truth when it is a toy-world split, else
    its classes).
    """
    from vlmsae.toyworld.export import ATTRIBUTES_CSV

    if spec is None and (store.manifest.get("data_source") or {}).get("kind"):
        spec = str(store.manifest["dataset_root"])  # cached from a dataset or shards
    if spec is not None and source_kind(spec) != "folder":
        return source_labels(store, spec)
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
        return csv_labels(store, path)
    if path.is_dir():
        split = store.manifest.get("split")
        if split and (path / split).is_dir():  # a dataset root, as given to `vlmsae cache`
            path = path / split
        loader: Callable[..., ConceptLabels] = folder_labels
        if (path / ATTRIBUTES_CSV).is_file():
            loader = toy_labels
        return loader(store, path)
    raise UserError(
        f"--labels {spec}: expected 'toy', an image folder or a .csv file, and no such "
        f"{'file' if path.suffix else 'folder'} exists"
    )
