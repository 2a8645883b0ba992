"""Concept labels from annotation files: a CSV of the user's, and CUB's attribute files.

A labels CSV has a header row and one row per image (several rows of one image add up):

- an image column: ``path`` (``image``, ``file``, ``filename``), absolute or relative to the
  CSV's folder or to the store's dataset folder; or ``index`` (``image_index``), the image's
  index in the store (0-based, the order of its ``images.txt``);
- every other column is a concept set. A column whose cells are all ``0/1``, ``true/false``
  or ``yes/no`` (or empty) is one concept, present where true (set ``label``); any other
  column is a set whose values are the concepts, several in one cell separated by ``;`` or
  ``|`` (a multi-label column).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.evaluate.labels import (
    ConceptLabels,
    _key,
    from_image_concepts,
    match_images,
    split_folder,
)

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore

PATH_COLUMNS = ("path", "image", "file", "filename")
INDEX_COLUMNS = ("index", "image_index")
TRUE, FALSE = {"1", "true", "yes", "y"}, {"0", "false", "no", "n", ""}
SPLIT = re.compile(r"[;|]")


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--labels {path}: cannot read it ({e})") from e
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    table = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if len(table) < 2:
        raise UserError(f"--labels {path}: expected a header row and one row per image")
    header = [h.strip() for h in table[0]]
    bad = [i + 2 for i, r in enumerate(table[1:]) if len(r) != len(header)]
    if bad:
        raise UserError(
            f"--labels {path}: row {bad[0]} has another number of cells than the header "
            f"({len(header)}: {', '.join(header)})"
        )
    return header, [[c.strip() for c in r] for r in table[1:]]


def _image_rows(
    store: ActivationStore, path: Path, header: list[str], body: list[list[str]]
) -> tuple[int, np.ndarray]:
    """The image column, and the CSV row of each of the store's images' first row."""
    lower = [h.lower() for h in header]
    n_images = len(store.images)
    if any(h in INDEX_COLUMNS for h in lower):
        col = next(i for i, h in enumerate(lower) if h in INDEX_COLUMNS)
        try:
            index = [int(r[col]) for r in body]
        except ValueError as e:
            raise UserError(f"--labels {path}: column {header[col]!r} must hold integers") from e
        bad = [i for i in index if not 0 <= i < n_images]
        if bad or set(range(n_images)) - set(index):
            what = f"image {bad[0]}" if bad else "not every image index"
            raise UserError(
                f"--labels {path}: column {header[col]!r} names {what}, but store "
                f"{store.dir} has images 0 to {n_images - 1}; give one row per image index"
            )
        return col, np.array(index, np.int64)
    if not any(h in PATH_COLUMNS for h in lower):
        raise UserError(
            f"--labels {path}: no image column; name one {' / '.join(PATH_COLUMNS)} (paths) "
            f"or {' / '.join(INDEX_COLUMNS)} (the store's image indices)"
        )
    col = next(i for i, h in enumerate(lower) if h in PATH_COLUMNS)
    bases = [path.parent] + ([f] if (f := split_folder(store)) is not None else [])
    known: dict[str, int] = {}
    for i, r in enumerate(body):
        for base in bases:
            known.setdefault(_key(base / r[col]), i)  # an absolute path ignores the base
    rows = match_images(store, known, f"--labels {path}",
                        " (paths relative to the CSV or to the dataset folder)")  # fmt: skip
    image_of_row = np.full(len(body), -1, np.int64)
    by_row = {int(r): n for n, r in enumerate(rows)}
    for i, r in enumerate(body):  # every CSV row of an image, not just the first
        for base in bases:
            hit = known.get(_key(base / r[col]))
            if hit is not None and hit in by_row:
                image_of_row[i] = by_row[hit]
                break
    return col, image_of_row


def csv_labels(store: ActivationStore, path: Path) -> ConceptLabels:
    """Labels of the store's images from a CSV (see the module docstring)."""
    header, body = _read(path)
    col, image_of_row = _image_rows(store, path, header, body)
    concepts: list[dict[str, list[str]]] = [{} for _ in store.images]
    order: dict[str, list[str]] = {}
    for j, name in enumerate(header):
        if j == col:
            continue
        cells = [r[j] for r in body]
        binary = all(c.lower() in TRUE | FALSE for c in cells)
        if binary:
            order.setdefault("label", []).append(name)
        for n, c in zip(image_of_row, cells, strict=True):
            if n < 0:
                continue
            held = ([name] if c.lower() in TRUE else []) if binary else [
                v.strip() for v in SPLIT.split(c) if v.strip()
            ]  # fmt: skip
            if held:
                concepts[n].setdefault("label" if binary else name, []).extend(held)
    if not order and all(not c for c in concepts):
        raise UserError(f"--labels {path}: no concept column besides {header[col]!r}")
    return from_image_concepts(concepts, f"CSV {path}", order)


def _attribute_names(root: Path) -> list[str] | None:
    for candidate in (root / "attributes" / "attributes.txt", root / "attributes.txt",
                      root.parent / "attributes.txt"):  # fmt: skip
        if candidate.is_file():
            return [ln.split(maxsplit=1)[1] for ln in candidate.read_text().splitlines()
                    if len(ln.split(maxsplit=1)) == 2]  # fmt: skip
    return None


def cub_attributes(root: Path, paths: list[str]) -> ConceptLabels | None:
    """CUB-200-2011's binary attributes of the images ``paths`` (``attributes/
    image_attribute_labels.txt``: image id, attribute id, is present, ...), one set per
    attribute group (``has_bill_shape:curved_(up_or_down)``); None when the folder lacks
    the files."""
    labels_path = root / "attributes" / "image_attribute_labels.txt"
    names = _attribute_names(root)
    if names is None or not labels_path.is_file():
        return None
    id_of = {}
    for ln in (root / "images.txt").read_text().splitlines():
        if ln.strip():
            image_id, rel = ln.split(maxsplit=1)
            id_of[_key(root / "images" / rel.strip())] = image_id
    want = {id_of.get(_key(p)): n for n, p in enumerate(paths)}
    concepts: list[dict[str, list[str]]] = [{} for _ in paths]
    for ln in labels_path.read_text().splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[2] == "1" and parts[0] in want:
            group, _, value = names[int(parts[1]) - 1].partition("::")
            concepts[want[parts[0]]].setdefault(group, []).append(value)
    order: dict[str, list[str]] = {}
    for name in names:
        group, _, value = name.partition("::")
        order.setdefault(group, []).append(value)
    return from_image_concepts(concepts, f"CUB attributes of {root}", order)
