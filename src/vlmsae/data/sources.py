"""Where the images are: one interface over folders, Hugging Face datasets, Parquet files and
WebDataset shards.

``--data`` names a source (:func:`open_source` tells them apart)::

    imagenet/                       a folder (ImageNet, iNaturalist, CUB, ImageFolder, flat)
    hf:ORG/NAME[:CONFIG]            a dataset in the local Hugging Face cache
    saved/                          a folder written by ``datasets.save_to_disk``
    'data/*.parquet'                Parquet files (a glob, a file, or a folder of them)
    'shards/{00000..01023}.tar'     WebDataset shards (brace syntax, a file, or a folder)

Every source yields an :class:`~vlmsae.data.images.ImageDataset` (the :class:`ImageSource`
protocol): a stable order, a key per image, labels and class names, the entries that could
not be listed with the reason, the source's identity for provenance, and a picklable
:class:`ImageReader` that decodes image ``i`` in a DataLoader worker with the rules of
:func:`~vlmsae.data.decode.open_rgb` (pixel budget from the header, before decoding). So the
stages (cache, embed, evaluate) need not know where the images are.

A key is a file path for a folder; otherwise ``tar:SHARD#MEMBER`` or
``{hf|arrow|parquet}:LOCATION@SPLIT#ROW``. :func:`open_image` opens any key, so the explorer,
the grids and ``vlmsae label`` read the images a store lists (``images.jsonl``) wherever
they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vlmsae.core.errors import UserError
from vlmsae.data.decode import Decoded, FileReader, open_rgb  # noqa: F401 - FileReader: API
from vlmsae.data.locate import is_key

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL import Image

    from vlmsae.data.images import ImageDataset

SOURCE_KINDS = ("folder", "hf", "arrow", "parquet", "webdataset")


@runtime_checkable
class ImageReader(Protocol):
    """Decodes image ``i`` of a source; picklable (sent to DataLoader worker processes)."""

    def __len__(self) -> int: ...

    def read(self, i: int) -> Decoded:
        """Image ``i`` as RGB, or None with the reason (never raises on bad bytes)."""
        ...


@runtime_checkable
class ImageSource(Protocol):
    """What every source yields (:class:`~vlmsae.data.images.ImageDataset` is the one class)."""

    root: str
    split: str | None
    layout: str
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    source: Mapping[str, Any]

    @property
    def keys(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def open_reader(self) -> ImageReader: ...


def source_kind(spec: str | os.PathLike[str]) -> str:
    """Which kind of source ``--data`` names (one of :data:`SOURCE_KINDS`)."""
    text = os.fspath(spec)
    if text.startswith("hf:"):
        return "hf"
    lower = text.lower()
    if lower.endswith(".tar") or (("{" in text or "*" in text) and ".tar" in lower):
        return "webdataset"
    if lower.endswith(".parquet") or ("*" in text and ".parquet" in lower):
        return "parquet"
    path = Path(text)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "arrow"
        names = [p.name.lower() for p in path.iterdir() if p.is_file()]
        if names and all(n.endswith(".tar") for n in names if not n.startswith(".")):
            return "webdataset"
        if names and all(n.endswith(".parquet") for n in names if not n.startswith(".")):
            return "parquet"
    return "folder"


def open_source(
    spec: str | os.PathLike[str],
    split: str | None = None,
    *,
    limit: int | None = None,
    every: int = 1,
    image_column: str | None = None,
    label_columns: Sequence[str] = (),
    layout: str = "auto",
) -> ImageDataset:
    """List the images of any source (see the module docstring) in a stable order.

    ``every`` keeps every n-th image, then ``limit`` the first n of those (as for folders).
    ``image_column`` / ``label_columns`` name the columns of a Hugging Face or Parquet source
    (detected when unambiguous: the one ``Image`` feature, the one ``ClassLabel`` feature;
    ``("*",)``: every ``ClassLabel`` column), or the ``.json`` field of WebDataset labels.

    Raises:
        UserError: the source is missing, or an optional extra it needs is not installed.
    """
    if every < 1 or (limit is not None and limit < 0):
        raise ValueError(f"every must be >= 1 and limit >= 0, got every={every}, limit={limit}")
    kind = source_kind(spec)
    if kind != "folder" and layout != "auto":
        raise UserError(f"--layout applies to image folders, not to a {kind} source ({spec})")
    if kind == "folder":
        if image_column or label_columns:
            raise UserError(
                f"--image-column and --label-column apply to Hugging Face, Parquet and "
                f"WebDataset sources; {spec} is an image folder (its class folders are labels)"
            )
        from vlmsae.data.images import load_dataset

        return load_dataset(spec, split, layout=layout, limit=limit, every=every)
    keep = slice(None, None, every)
    if kind == "webdataset":
        from vlmsae.data.tar_source import load_shards

        label = label_columns[0] if label_columns else None
        return load_shards(os.fspath(spec), split, keep=keep, limit=limit, label_field=label)
    from vlmsae.data.hf_source import load_hf

    return load_hf(
        os.fspath(spec), kind, split, keep=keep, limit=limit, image_column=image_column,
        label_columns=tuple(label_columns),
    )  # fmt: skip


def open_image(key: str) -> Decoded:
    """Open the image a store lists (``images.jsonl``), whatever its source: a file path, a
    member of a ``.tar`` shard or a row of a Hugging Face / Parquet dataset. Never raises on
    an unreadable or missing image (returns the reason)."""
    try:
        if key.startswith("tar:"):
            from vlmsae.data.tar_source import read_member

            return read_member(key)
        if is_key(key):
            from vlmsae.data.hf_source import read_row

            return read_row(key)
    except (OSError, ValueError, KeyError, IndexError, UserError) as e:
        return Decoded(None, f"{type(e).__name__}: {e}")
    return open_rgb(key)


def load_rgb(key: str) -> Image.Image:
    """The image of a key as RGB (:func:`open_image`), or :class:`UserError` naming the key and
    why it cannot be read (for images a store holds rows of, which decoded when cached)."""
    decoded = open_image(key)
    if decoded.image is None:
        raise UserError(f"cannot read image {key}: {decoded.error}")
    return decoded.image


def key_suffix(key: str) -> str:
    """The image's file extension in a key (``.jpg``), lower case; '' when there is none."""
    name = key.rsplit("#", 1)[-1] if key.startswith("tar:") else key
    if is_key(key) and not key.startswith("tar:"):
        return ""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
