"""Image datasets from folder layouts, with robust decoding.

Layouts (``layout="auto"`` detects them):

- ``imagenet``: ``ROOT/{train,val}/nXXXXXXXX/*.JPEG`` (one folder per WordNet id).
- ``inat21``: ``ROOT/{train,train_mini,val}/CLASS/`` where CLASS is
  ``NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species``;
  the taxonomy is parsed from the folder name (:attr:`ImageDataset.taxonomy`).
- ``cub``: ``ROOT/images/NNN.Class_Name/*.jpg`` with ``images.txt`` and
  ``train_test_split.txt`` (split ``train`` or ``test``).
- ``imagefolder``: ``ROOT[/SPLIT]/CLASS/*`` (any class names).
- ``flat``: ``ROOT[/SPLIT]/*`` (no classes; label -1).

Order is deterministic: classes sorted by name, files sorted by name within a class.
``every`` keeps every n-th image, then ``limit`` keeps the first n of those. Paths are made
absolute, so a store written from a relative ``--data`` reads from any working directory.

Hidden folders (``.ipynb_checkpoints``, ``.git``) are never classes, and a subfolder without
images does not make a flat folder an ImageFolder. A folder with both loose images and
class folders holding images is refused: which of them is the dataset is the user's call.
Symbolic links that dangle or loop, and FIFOs, sockets and device files, are listed in
:attr:`ImageDataset.skipped` with the reason (and logged), never dropped in silence.

Decoding (:mod:`vlmsae.data.decode`, re-exported here) refuses an image above a pixel budget
from its header, before a pixel is decoded. Other sources (Hugging Face datasets, Parquet,
WebDataset shards) yield the same :class:`ImageDataset`: see :mod:`vlmsae.data.sources`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsae.core.errors import UserError
from vlmsae.data.decode import (  # noqa: F401 - re-exported: the decoding rules of every source
    MAX_PIXELS,
    MAX_PIXELS_ENV,
    Decoded,
    FileReader,
    max_pixels,
    open_rgb,
    to_rgb,
)

if TYPE_CHECKING:
    from vlmsae.data.sources import ImageReader

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "imagenet", "inat21", "cub", "imagefolder", "flat")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
TAXONOMY_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_INAT_DIR = re.compile(r"^\d{5}_[A-Za-z]+(_[A-Za-z-]+){5,}$")
_WNID_DIR = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageDataset:
    """A list of images with class labels, in a fixed order: the one interface every source
    yields (:class:`vlmsae.data.sources.ImageSource`), a folder, a Hugging Face dataset,
    Parquet files or WebDataset shards."""

    root: str
    """The dataset root given by the user (a folder, ``hf:ORG/NAME``, a glob of shards)."""
    split: str | None
    """The split folder or CUB split used, or None."""
    layout: str
    """The resolved layout (never ``auto``): a folder layout, ``hf``, ``arrow``, ``parquet``
    or ``webdataset``."""
    paths: tuple[str, ...]
    """A key per image, in dataset order: the absolute file path for a folder, a source key
    (``tar:SHARD#MEMBER``, ``hf:...#ROW``) that :func:`vlmsae.data.sources.open_image` opens
    otherwise."""
    labels: tuple[int, ...]
    """Class index per image (-1 when the layout has no classes)."""
    classes: tuple[str, ...] = ()
    """Class names (folder names), indexed by label."""
    taxonomy: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    """iNaturalist 2021: per class, the names at :data:`TAXONOMY_LEVELS`."""
    skipped: tuple[tuple[str, str], ...] = ()
    """Entries that could not be listed as images, as ``(key, reason)``: symbolic links that
    dangle or loop, samples of a shard without an image member."""
    source: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """What the images were read from (recorded in every store's manifest as ``data_source``):
    kind, name / config / revision or fingerprint, split, shards with sizes. Empty for a
    folder (its root and split say it)."""
    reader: ImageReader | None = field(default=None, repr=False, compare=False)
    """Reads image ``i`` (in worker processes); None: the files of :attr:`paths`."""
    label_sets: Mapping[str, tuple[tuple[int, ...], tuple[str, ...]]] = field(
        default_factory=dict, repr=False
    )
    """Every label column read, by name: ``(label per image, class names)`` (evaluation
    against several labels); :attr:`labels` / :attr:`classes` are the first."""
    captions: tuple[str, ...] = field(default=(), repr=False)
    """A caption per image where the source has them (``.txt`` members), else empty."""

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels must have the same length")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def keys(self) -> tuple[str, ...]:
        """A key per image, in dataset order (the same tuple as :attr:`paths`)."""
        return self.paths

    def open_reader(self) -> ImageReader:
        """What decodes image ``i`` in a worker process (picklable)."""
        if self.reader is not None:
            return self.reader
        return FileReader(self.paths)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _broken_link(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (it dangles or loops), or None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"dangling symbolic link to {os.readlink(path)} ({e.strerror})"
    return None


def _special_file(path: Path) -> str | None:
    """Why ``path`` is neither a regular file nor a folder (a FIFO, socket or device), or None.
    Reading a FIFO would block a worker forever; a device may never end."""
    kinds = (
        (Path.is_fifo, "a FIFO (named pipe)"),
        (Path.is_socket, "a socket"),
        (Path.is_block_device, "a block device"),
        (Path.is_char_device, "a character device"),
    )
    for test, kind in kinds:
        if test(path):
            return f"not a regular file: {kind}"
    return None


def _files(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """The images in ``folder`` by name; broken links and special files (FIFOs, sockets,
    devices) go to ``skipped`` with the reason."""
    files = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if _is_image(p):
            files.append(p)
        elif skipped is not None and (reason := _broken_link(p) or _special_file(p)):
            skipped.append((str(p), reason))
    return files


def _class_dirs(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` by name; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _has_image(folder: Path) -> bool:
    return any(_is_image(p) for p in folder.iterdir())


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` (the folder that holds classes or images).

    Raises:
        UserError: ``root`` holds both loose images and class folders with images.
    """
    if (root / "images").is_dir() and (root / "train_test_split.txt").is_file():
        return "cub"
    dirs = _class_dirs(root)
    loose = _files(root)
    if loose:
        with_images = [d for d in dirs if _has_image(d)]
        if with_images:
            _refuse_mixed(root, loose, with_images)
        dirs = []  # empty subfolders do not make a flat folder an ImageFolder
    if not dirs:
        return "flat"
    names = [d.name for d in dirs]
    if all(_INAT_DIR.match(n) for n in names):
        return "inat21"
    if all(_WNID_DIR.match(n) for n in names):
        return "imagenet"
    return "imagefolder"


def _refuse_mixed(root: Path, loose: list[Path], dirs: list[Path]) -> None:
    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    raise UserError(
        f"{root} holds both {len(loose)} images at its top level ({some([p.name for p in loose])}) "
        f"and {len(dirs)} folders with images ({some([d.name + '/' for d in dirs])}); it is "
        "neither a flat folder nor an ImageFolder, and vlmsae will not guess which images you "
        "mean: move the loose images into a class folder, or the folders out of it "
        "(or load it with layout='flat' / 'imagefolder' to take only one part)"
    )


def load_dataset(
    root: str | Path,
    split: str | None = None,
    *,
    layout: str = "auto",
    limit: int | None = None,
    every: int = 1,
) -> ImageDataset:
    """List the images of a dataset folder (see the module docstring for layouts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if every < 1 or (limit is not None and limit < 0):
        raise ValueError(f"every must be >= 1 and limit >= 0, got every={every}, limit={limit}")
    root_path = Path(os.path.abspath(root))  # stores must not depend on the working directory
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset folder {root_path} does not exist")
    is_cub = layout == "cub" or (layout == "auto" and detect_layout(root_path) == "cub")
    folder = root_path
    if split and not is_cub:
        folder = root_path / split
        if not folder.is_dir():
            found = ", ".join(d.name for d in _class_dirs(root_path)[:10])
            raise FileNotFoundError(f"no split folder {folder} (folders in {root_path}: {found})")
    resolved = "cub" if is_cub else (detect_layout(folder) if layout == "auto" else layout)
    skipped: list[tuple[str, str]] = []
    if resolved == "cub":
        paths, labels, classes = _list_cub(root_path, split)
    elif resolved == "flat":
        paths = [str(p) for p in _files(folder, skipped)]
        labels, classes = [-1] * len(paths), []
        if ignored := [d.name for d in _class_dirs(folder) if _has_image(d)]:
            log.warning("%s: layout flat: not reading the images in folders %s", folder, ignored)
    else:
        paths, labels, classes = _list_class_folders(folder, skipped)
        if loose := _files(folder, skipped):  # also lists broken links at the class level
            log.warning("%s: %d images outside class folders are not used", folder, len(loose))
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    keep = slice(None, None, every)
    paths, labels = paths[keep], labels[keep]
    if limit is not None:
        paths, labels = paths[:limit], labels[:limit]
    taxonomy = tuple(parse_inat_taxonomy(c) for c in classes) if resolved == "inat21" else ()
    if not paths:
        raise ValueError(f"found no images in {folder} (layout {resolved})")
    log.info("%s: %d images, %d classes (layout %s)", folder, len(paths), len(classes), resolved)
    return ImageDataset(
        str(root_path),
        split,
        resolved,
        tuple(paths),
        tuple(labels),
        tuple(classes),
        taxonomy,
        tuple(skipped),
    )


def _list_class_folders(
    folder: Path, skipped: list[tuple[str, str]]
) -> tuple[list[str], list[int], list[str]]:
    paths: list[str] = []
    labels: list[int] = []
    classes = _class_dirs(folder)
    for label, class_dir in enumerate(classes):
        files = _files(class_dir, skipped)
        paths.extend(str(p) for p in files)
        labels.extend([label] * len(files))
    return paths, labels, [c.name for c in classes]


def _list_cub(root: Path, split: str | None) -> tuple[list[str], list[int], list[str]]:
    """CUB-200-2011: ``images.txt`` (id, relative path), ``train_test_split.txt`` (id, 1=train)."""
    if split not in (None, "train", "test"):
        raise ValueError(f"CUB has splits 'train' and 'test', got {split!r}")
    ids_paths = [ln.split() for ln in (root / "images.txt").read_text().splitlines() if ln.strip()]
    is_train = {
        a: b == "1"
        for a, b in (
            ln.split() for ln in (root / "train_test_split.txt").read_text().splitlines() if ln
        )
    }
    classes = sorted({rel.split("/")[0] for _, rel in ids_paths})
    index = {c: i for i, c in enumerate(classes)}
    rows = [
        (str(root / "images" / rel), index[rel.split("/")[0]])
        for image_id, rel in ids_paths
        if split is None or is_train.get(image_id, False) == (split == "train")
    ]
    rows.sort(key=lambda r: (r[1], Path(r[0]).name))
    return [r[0] for r in rows], [r[1] for r in rows], classes


def parse_inat_taxonomy(class_dir: str) -> tuple[str, ...]:
    """``"00001_Animalia_Arthropoda_Insecta_..._Genus_species"`` -> the 7 names of
    :data:`TAXONOMY_LEVELS` (species as ``"Genus species"``, extra words kept)."""
    parts = class_dir.split("_")
    if len(parts) < 8:
        raise ValueError(f"{class_dir!r} is not an iNaturalist 2021 class folder name")
    kingdom, phylum, cls, order, family, genus = parts[1:7]
    species = " ".join([genus, *parts[7:]])
    return kingdom, phylum, cls, order, family, genus, species
