"""Constants of the store format shared by its writer and reader (see ``store.py``), the
image list file, and the ``.npy`` header checks of the reader."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vlmsae.core.errors import StoreError
from vlmsae.core.io import atomic_write_text

SCHEMA = 1
KINDS = ("activations", "embeddings", "codes")
DTYPES = ("float16", "float32", "bfloat16")
MANIFEST = "manifest.json"
CSR_PARTS = ("indptr", "indices", "values")
IMAGES_FILE = "images.jsonl"
"""Image path per image index: one JSON string per line. File names may hold newlines,
U+2028, ``\\x85`` or ``\\x0c`` (all legal on Linux); JSON escapes them, so a line is always
one image."""
OLD_IMAGES_FILE = "images.txt"
"""The image list of stores written before ``images.jsonl``: one path per line (read only)."""


def write_image_list(store_dir: str | Path, paths: Sequence[str]) -> None:
    """Write ``images.jsonl`` (atomically): ``json.dumps(path)`` per line, ASCII only, so
    that no character of a file name can split or merge lines (undecodable bytes of a
    name, kept by Python as surrogates, round-trip too)."""
    text = "".join(json.dumps(str(p), ensure_ascii=True) + "\n" for p in paths)
    atomic_write_text(Path(store_dir) / IMAGES_FILE, text)


def read_image_list(store_dir: str | Path) -> list[str]:
    """Image path per image index of a store: ``images.jsonl``, else an old store's
    ``images.txt``, else ``[]`` (a store written without image paths)."""
    store_dir = Path(store_dir)
    path = store_dir / IMAGES_FILE
    if path.exists():
        paths = []
        for number, line in enumerate(_lines(path.read_text(encoding="utf-8")), 1):
            try:
                paths.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise StoreError(
                    f"{path} is damaged (line {number}: {e.msg}); recreate the store"
                ) from e
        return paths
    old = store_dir / OLD_IMAGES_FILE
    if old.exists():  # newline-separated: exact for every name without a newline in it
        return _lines(old.read_text(encoding="utf-8"))
    return []


def _lines(text: str) -> list[str]:
    """Split on ``\n`` only (``str.splitlines`` also splits on U+2028, ``\x85``, ``\x0c``)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
