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

from vlmsae.core.io import atomic_write, atomic_write_text, write_json
from vlmsae.core.progress import tqdm
from vlmsae.toyworld.shapes import ToyImage
from vlmsae.toyworld.worlds import World, get_world, world_of_split

log = logging.getLogger(__name__)

ATTRIBUTES_CSV = "attributes.csv"
CSV_COLUMNS = ("path", *(f.name for f in fields(ToyImage)), "caption")
"""Columns of the shapes world's ``attributes.csv``; ``path`` is relative to the split
folder. Other worlds: :func:`csv_columns`."""


def csv_columns(world: str | World | None = None) -> tuple[str, ...]:
    """Columns of ``attributes.csv`` of ``world``: ``path``, the record's fields, ``caption``."""
    return ("path", *(f.name for f in fields(get_world(world).record_type)), "caption")


class ExportedImage(NamedTuple):
    """One image of an exported split."""

    path: Path
    """Absolute path of the image file."""
    record: ToyImage
    """Its ground truth (an ``EmojiImage`` in the emoji world)."""


def class_dir_name(*leaf: str, world: str | World | None = None) -> str:
    """``NNNNN_level1_level2_level3`` of a taxonomy leaf (``NNNNN_family_shape_color``
    in the shapes world, ``NNNNN_group_subgroup_emoji`` in the emoji world)."""
    w = get_world(world)
    return f"{_class_numbers(w.name)[leaf]:05d}_{'_'.join(leaf)}"


def _class_numbers(world: str) -> dict[tuple[str, ...], int]:
    return {leaf: i for i, leaf in enumerate(get_world(world).leaf_classes())}


def export_imagefolder(
    out_dir: str | Path,
    split: str = "test",
    n: int = 1000,
    seed: int = 0,
    world: str | World | None = None,
) -> Path:
    """Render ``n`` images of ``split`` of ``world`` into ``out_dir/split``; returns it.

    Re-exporting the same ``(world, split, n, seed)`` writes identical files.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    w = get_world(world)
    folder = Path(out_dir) / split
    numbers = _class_numbers(w.name)

    def dir_name(r) -> str:
        leaf = w.leaf(r)
        return f"{numbers[leaf]:05d}_{'_'.join(leaf)}"

    records = sorted(w.iter_world(split, n, seed), key=lambda r: (dir_name(r), r.index))
    rows = []
    for r in tqdm(records, desc=f"export {split}", unit="img", mininterval=5):
        rel = f"{dir_name(r)}/{split}_{r.index:06d}.png"
        image = w.render(r, seed)
        atomic_write(folder / rel, lambda p, im=image: im.save(p, format="PNG"))
        rows.append({"path": rel, **r.to_dict()})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(w), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / ATTRIBUTES_CSV, buf.getvalue())
    write_json(
        folder / "world.json",
        {
            "world": w.name,
            **w.options,
            "split": split,
            "n_images": n,
            "seed": seed,
            "taxonomy_levels": list(w.taxonomy_levels),
            "taxonomy": w.taxonomy(),
            "attributes": {k: list(v) for k, v in w.attributes.items()},
        },
    )
    log.info("exported %d %s images to %s", n, split, folder)
    return folder


def read_exported(folder: str | Path) -> list[ExportedImage]:
    """The images of an exported split folder with their ground truth, in dataset order."""
    folder = Path(folder)
    csv_path = folder / ATTRIBUTES_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: {folder} is not a toy-world split folder "
            "(write one with `vlmsae toyworld export` or export_imagefolder())"
        )
    world = world_of_split(folder)
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [
            ExportedImage((folder / row["path"]).resolve(), world.record_from_row(row))
            for row in csv.DictReader(f)
        ]
