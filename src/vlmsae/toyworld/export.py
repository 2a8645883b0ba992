"""Write the toy world to disk: an iNaturalist-style ImageFolder and its ground truth.

Layout of ``export_imagefolder(out_dir, split, n)``::

    out_dir/split/00000_curved_circle_red/split_000017.png
    out_dir/split/...                              (one folder per taxonomy leaf present)
    out_dir/split/attributes.csv                   (one row per image, ground truth)
    out_dir/split/world.json                       (seed, n, taxonomy, attribute values)

Folder names are ``NNNNN_family_shape_color``: the class number, then the taxonomy from
the top level down, as in iNaturalist 2021. Rows of ``attributes.csv`` are in dataset
order (folders sorted by name, files sorted by name), the order in which an ImageFolder
reader lists the images, so row ``i`` of an embedding store written from the CSV is image
``i`` of an activation store cached from the folder.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from vlmsae._io import atomic_write, atomic_write_text, write_json
from vlmsae._progress import tqdm
from vlmsae.toyworld.world import (
    ATTRIBUTES,
    SHAPE_FAMILIES,
    ToyImage,
    iter_world,
    leaf_classes,
    render,
)

log = logging.getLogger(__name__)

ATTRIBUTES_CSV = "attributes.csv"
CSV_COLUMNS = ("path", *(f.name for f in fields(ToyImage)), "caption")
"""Columns of ``attributes.csv``; ``path`` is relative to the split folder."""


class ExportedImage(NamedTuple):
    """One image of an exported split."""

    path: Path
    """Absolute path of the image file."""
    record: ToyImage
    """Its ground truth."""


def class_dir_name(family: str, shape: str, color: str) -> str:
    """``NNNNN_family_shape_color`` of a taxonomy leaf."""
    return f"{leaf_classes().index((family, shape, color)):05d}_{family}_{shape}_{color}"


def export_imagefolder(
    out_dir: str | Path, split: str = "test", n: int = 1000, seed: int = 0
) -> Path:
    """Render ``n`` images of ``split`` into ``out_dir/split``; returns that folder.

    Re-exporting the same ``(split, n, seed)`` writes identical files.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    folder = Path(out_dir) / split
    records = sorted(iter_world(split, n, seed), key=lambda r: (class_dir_name(*_leaf(r)), r.index))
    rows = []
    for r in tqdm(records, desc=f"export {split}", unit="img", mininterval=5):
        rel = f"{class_dir_name(*_leaf(r))}/{split}_{r.index:06d}.png"
        image = render(r, seed)
        atomic_write(folder / rel, lambda p, im=image: im.save(p, format="PNG"))
        rows.append({"path": rel, **r.to_dict()})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / ATTRIBUTES_CSV, buf.getvalue())
    write_json(
        folder / "world.json",
        {
            "split": split,
            "n_images": n,
            "seed": seed,
            "taxonomy_levels": ["family", "shape", "color"],
            "taxonomy": {f: list(s) for f, s in SHAPE_FAMILIES.items()},
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        },
    )
    log.info("exported %d %s images to %s", n, split, folder)
    return folder


def _leaf(r: ToyImage) -> tuple[str, str, str]:
    return r.family, r.shape, r.color


def read_exported(folder: str | Path) -> list[ExportedImage]:
    """The images of an exported split folder with their ground truth, in dataset order."""
    folder = Path(folder)
    csv_path = folder / ATTRIBUTES_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: {folder} is not a toy-world split folder "
            "(write one with `vlmsae toyworld export` or export_imagefolder())"
        )
    out = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kwargs = {}
            for fld in fields(ToyImage):
                value = row[fld.name]
                kwargs[fld.name] = int(value) if fld.name == "index" else value
                if fld.name in ("x", "y", "radius", "angle"):
                    kwargs[fld.name] = float(value)
            out.append(ExportedImage((folder / row["path"]).resolve(), ToyImage(**kwargs)))
    return out
