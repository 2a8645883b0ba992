"""Whether a store's files are the ones its manifest describes: header shapes, sizes
(truncation) and checksums (see :mod:`vlmsae.core.checksum`).

The manifest's ``checksums`` maps every data file of the store (each shard's ``.npy`` file
or its three CSR files, ``rows.npy``, ``images.jsonl``) to its checksum, relative to the
store folder. Stores written before checksums existed have no such map: they are read
with one warning per store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vlmsae.core.checksum import CHECKSUMS, checksum_problem, file_checksum
from vlmsae.data.format import CSR_PARTS, IMAGES_FILE, MANIFEST, StoreError

log = logging.getLogger(__name__)
ROWS_FILE = "rows.npy"
NO_CHECKSUMS = "no checksums: written by an older vlmsae"
_warned: set[str] = set()  # stores warned about in this process (one warning per store)


def shard_files(shard: dict[str, Any], sparse: bool) -> list[str]:
    """The files of one shard, relative to the store folder."""
    name = shard["file"]
    return [f"{name}.{p}.npy" for p in CSR_PARTS] if sparse else [name]


def data_files(store_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Every file of a store that a checksum covers (``images.jsonl`` where it exists)."""
    sparse = manifest["kind"] == "codes"
    files = [f for shard in manifest["shards"] for f in shard_files(shard, sparse)]
    if manifest.get("complete"):
        files.append(ROWS_FILE)
        if (store_dir / IMAGES_FILE).exists():
            files.append(IMAGES_FILE)
    return files


def record_checksums(store_dir: Path, files: list[str]) -> dict[str, str]:
    """``{file: checksum}`` of ``files`` (relative to ``store_dir``), as written."""
    return {f: file_checksum(store_dir / f) for f in files}


def has_checksums(manifest: dict[str, Any]) -> bool:
    """Whether the store was written with checksums."""
    return isinstance(manifest.get(CHECKSUMS), dict)


def warn_unverified(store_dir: Path) -> None:
    """Warn once per process that a store's files cannot be verified."""
    key = str(store_dir.resolve())
    if key not in _warned:
        _warned.add(key)
        log.warning("%s has %s; its files are read unverified", store_dir, NO_CHECKSUMS)


def verify_store_file(store_dir: Path, manifest: dict[str, Any], name: str) -> None:
    """Raise :class:`StoreError` unless ``name`` matches its recorded checksum (nothing
    to check in a store without checksums)."""
    expected = (manifest.get(CHECKSUMS) or {}).get(name)
    if expected is None:
        if has_checksums(manifest):
            raise StoreError(
                f"{store_dir / name} has no checksum in {store_dir / MANIFEST}: the manifest "
                "was edited or damaged; recreate the store"
            )
        return
    if problem := checksum_problem(store_dir / name, expected):
        raise StoreError(
            f"{problem}; recreate the store (`vlmsae verify {store_dir}` lists every damaged file)"
        )


def shape_problems(store_dir: Path, manifest: dict[str, Any], n_rows: int) -> list[str]:
    """Where the files' ``.npy`` headers and sizes disagree with the manifest (rows, width,
    CSR lengths, truncation): cheap, read at every open."""
    problems = []
    for shard in manifest["shards"]:
        problems += _shard_problems(store_dir, shard, manifest)
    if int(manifest.get("n_rows", n_rows)) != n_rows:
        problems.append(f"n_rows is {manifest['n_rows']} but its shards hold {n_rows}")
    if manifest["complete"]:
        problems += _shape_problems(store_dir, ROWS_FILE, (n_rows, 2))
    return problems


def _shard_problems(store_dir: Path, shard: dict[str, Any], manifest: dict[str, Any]) -> list:
    rows, name, d = int(shard["rows"]), shard["file"], int(manifest["d"])
    if manifest["kind"] != "codes":
        return _shape_problems(store_dir, name, (rows, d))
    problems = _shape_problems(store_dir, f"{name}.indptr.npy", (rows + 1,))
    lengths = {}
    for p in ("indices", "values"):
        problems += _size_problem(store_dir / f"{name}.{p}.npy")
        lengths[p] = npy_shape(store_dir / f"{name}.{p}.npy")
    problems += [f"{name}.{p}.npy is missing" for p, n in lengths.items() if n is None]
    nnz = {n[0] for n in lengths.values() if n is not None} | {shard.get("nnz")} - {None}
    if len(nnz) > 1:
        problems.append(
            f"{name}: {lengths['indices']} indices and {lengths['values']} values where "
            f"the manifest says {shard.get('nnz')} nonzeros"
        )
    return problems


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """Shape, dtype and data offset from an ``.npy`` header, or None if there is no file."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
            return tuple(shape), np.dtype(dtype), f.tell()
    except FileNotFoundError:
        return None
    except ValueError as e:  # not an .npy file, or its header is cut
        raise StoreError(f"{path} is not a NumPy array file ({e}); recreate the store") from e


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` header (the data is not read), or None if there is no file."""
    header = _npy_header(path)
    return None if header is None else header[0]


def _size_problem(path: Path) -> list[str]:
    """A truncated (or overlong) ``.npy`` file: its size disagrees with its own header."""
    header = _npy_header(path)
    if header is None:
        return []
    shape, dtype, offset = header
    want, found = offset + int(np.prod(shape)) * dtype.itemsize, path.stat().st_size
    if found == want:
        return []
    what = "truncated" if found < want else "longer than its header says"
    return [f"{path.name} is {what} ({found:,} bytes where its header implies {want:,})"]


def _shape_problems(folder: Path, name: str, want: tuple[int, ...]) -> list[str]:
    found = npy_shape(folder / name)
    if found is None:
        return [f"{name} is missing"]
    if found != want:
        return [f"{name} holds {found} where the manifest says {want}"]
    return _size_problem(folder / name)
