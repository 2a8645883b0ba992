"""Hugging Face datasets as image sources: ``hf:ORG/NAME[:CONFIG]`` (the local HF cache;
offline with ``HF_HUB_OFFLINE=1``), a ``datasets.save_to_disk`` folder, and Parquet files.

The rows are read through ``datasets`` (the optional extra ``vlmsae[hf]``): Arrow tables,
memory-mapped, so a :class:`RowReader` pickled into a DataLoader worker reads the encoded
bytes of row ``i`` without loading the dataset, and decodes them with
:func:`~vlmsae.data.decode.open_rgb`. The image column is the one ``Image`` feature unless
``image_column`` names it; the labels come from the one ``ClassLabel`` feature (its names are
the class names) unless ``label_columns`` names them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.data.decode import Decoded, open_rgb
from vlmsae.data.locate import expand_files, file_list, require

if TYPE_CHECKING:
    from datasets import Dataset

    from vlmsae.data.images import ImageDataset

log = logging.getLogger(__name__)
_KEY = re.compile(r"^(hf|arrow|parquet):(.*)@([^@/#]*)#(\d+)$")


def load_hf(
    spec: str,
    kind: str,
    split: str | None,
    *,
    keep: slice,
    limit: int | None,
    image_column: str | None,
    label_columns: tuple[str, ...],
) -> ImageDataset:
    """List a Hugging Face dataset (``kind``: ``hf``, ``arrow`` or ``parquet``) as an
    :class:`~vlmsae.data.images.ImageDataset` whose keys are ``KIND:LOCATION@SPLIT#ROW``."""
    from vlmsae.data.images import ImageDataset

    location = spec[3:] if kind == "hf" else os.path.abspath(spec)
    ds, split = _load(kind, location, split)
    column = _image_column(ds, image_column, spec)
    rows_N = np.arange(len(ds), dtype=np.int64)[keep]
    if limit is not None:
        rows_N = rows_N[:limit]
    if len(rows_N) == 0:
        raise UserError(f"--data {spec}: no images (split {split}, {len(ds)} rows)")
    label_sets = {name: _labels(ds, name, rows_N) for name in _label_columns(ds, label_columns)}
    labels, classes = next(iter(label_sets.values()), ((-1,) * len(rows_N), ()))
    keys = tuple(f"{kind}:{location}@{split}#{r}" for r in rows_N.tolist())
    log.info("%s: %d images, %d classes (%s, split %s)", spec, len(keys), len(classes), kind, split)
    return ImageDataset(
        spec if kind == "hf" else location,
        split,
        kind,
        keys,
        labels,
        classes,
        source={
            **_identity(ds, kind, location, split, column),
            "label_columns": list(label_sets),
            "classes": list(classes),
        },
        reader=RowReader(ds, column, rows_N),
        label_sets=label_sets,
    )


class RowReader:
    """Decodes row ``rows[i]`` of a dataset's image column (picklable: a memory-mapped
    dataset pickles as the paths of its Arrow files)."""

    def __init__(self, ds: Dataset, column: str, rows: np.ndarray) -> None:
        self.table = ds.select_columns([column]).with_format("arrow")
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> Decoded:
        return _decode_cell(self.table[int(self.rows[i])].column(0)[0].as_py())


def _decode_cell(cell: Any) -> Decoded:
    """An ``Image`` feature's ``{"bytes", "path"}``, or raw bytes, decoded."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data is not None:
            return open_rgb(data)
        if path:
            return open_rgb(path)
        return Decoded(None, "no image in this row (neither bytes nor a path)")
    if isinstance(cell, (bytes, bytearray)):
        return open_rgb(cell)
    if cell is None:
        return Decoded(None, "no image in this row (null)")
    return Decoded(None, f"the image column holds {type(cell).__name__}, not encoded image bytes")


def read_row(key: str) -> Decoded:
    """Open the image of a ``hf:`` / ``arrow:`` / ``parquet:`` key (the explorer, grids)."""
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"not a dataset row key: {key!r}")
    kind, location, split, row = match.groups()
    ds, _ = _cached(kind, location, split)
    column = _image_column(ds, None, location)
    return RowReader(ds, column, np.asarray([int(row)])).read(0)


@functools.lru_cache(maxsize=8)
def _cached(kind: str, location: str, split: str) -> tuple[Dataset, str]:
    return _load(kind, location, split or None)


def _load(kind: str, location: str, split: str | None) -> tuple[Dataset, str]:
    """The dataset and the split it is (one split chosen from several, or refused)."""
    datasets = require("datasets", "hf")
    try:
        if kind == "arrow":
            loaded = datasets.load_from_disk(location)
        elif kind == "parquet":
            files = expand_files(location, ".parquet")
            loaded = datasets.load_dataset("parquet", data_files={split or "train": files})
        else:
            name, _, config = location.partition(":")
            loaded = datasets.load_dataset(name, config or None, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        hint = " (with HF_HUB_OFFLINE=1: only datasets in the local cache)" if kind == "hf" else ""
        raise UserError(f"cannot load {kind} dataset {location}{hint}: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            want = f"no split {split!r}" if split else "several splits"
            raise UserError(f"{location} has {want}; choose --split {' | '.join(splits)}")
        return loaded[split], split
    return loaded, split or (str(loaded.split) if loaded.split else "train")


def _image_column(ds: Dataset, name: str | None, spec: str) -> str:
    from datasets import Image, Value

    features = ds.features
    if name is not None:
        if name not in features:
            raise UserError(f"{spec} has no column {name!r}; columns: {', '.join(features)}")
        ok = isinstance(features[name], Image) or (
            isinstance(features[name], Value) and features[name].dtype in ("binary", "large_binary")
        )
        if not ok:
            raise UserError(f"column {name!r} of {spec} holds {features[name]}, not images")
        return name
    images = [c for c, f in features.items() if isinstance(f, Image)]
    if len(images) == 1:
        return images[0]
    found = f"{len(images)} Image columns ({', '.join(images)})" if images else "no Image column"
    raise UserError(f"{spec} has {found}; name the image column with --image-column")


def _label_columns(ds: Dataset, names: tuple[str, ...]) -> tuple[str, ...]:
    from datasets import ClassLabel

    features = ds.features
    found = tuple(c for c, f in features.items() if isinstance(f, ClassLabel))
    if names == ("*",):  # every ClassLabel column (evaluation against several labels)
        return found
    for name in names:
        if name not in features:
            raise UserError(f"no label column {name!r}; columns: {', '.join(features)}")
    if names:
        return names
    if len(found) > 1:
        log.warning("several ClassLabel columns %s: no labels; choose with --label-column", found)
        return ()
    return found


def _labels(ds: Dataset, name: str, rows_N: np.ndarray) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Labels of ``rows`` and class names: a ``ClassLabel``'s names, the sorted distinct
    values of a string column, or ``"0".."max"`` for integers (None / -1: no label)."""
    from datasets import ClassLabel

    feature = ds.features[name]
    values = ds.select_columns([name]).with_format("arrow")[name].to_pylist()
    picked = [values[r] for r in rows_N.tolist()]
    if isinstance(feature, ClassLabel):
        return tuple(-1 if v is None else int(v) for v in picked), tuple(feature.names)
    if all(v is None or isinstance(v, str) for v in values):
        classes = tuple(sorted({v for v in values if v is not None}))
        index = {c: i for i, c in enumerate(classes)}
        return tuple(index.get(v, -1) for v in picked), classes
    try:
        ints = [-1 if v is None else int(v) for v in picked]
        top = max((int(v) for v in values if v is not None), default=-1)
    except (TypeError, ValueError):
        raise UserError(f"label column {name!r} holds {feature}, not class labels") from None
    return tuple(ints), tuple(str(i) for i in range(top + 1))


def _identity(ds: Dataset, kind: str, location: str, split: str, column: str) -> dict[str, Any]:
    """What a store records of the source (provenance): name/config/revision or path, split,
    the fingerprint ``datasets`` keeps of the table, and its files with their sizes."""
    files = [f["filename"] for f in ds.cache_files]
    out: dict[str, Any] = {"kind": kind, "split": split, "image_column": column}
    if kind == "hf":
        name, _, config = location.partition(":")
        out.update(name=name, config=config or None, revision=_revision(files))
    elif kind == "parquet":
        out.update(pattern=location, parquet=file_list(expand_files(location, ".parquet")))
    else:
        out.update(path=location)
    out.update(fingerprint=getattr(ds, "_fingerprint", None), files=file_list(files))
    return out


def _revision(files: list[str]) -> str | None:
    """The dataset's commit in the HF cache path (``.../0.0.0/<sha>/...``), where it shows."""
    for f in files:
        for part in reversed(os.path.normpath(f).split(os.sep)):
            if re.fullmatch(r"[0-9a-f]{16,64}", part):
                return part
    return None
