"""Checksums of the files behind every number: store shards and SAE weights.

An artifact's JSON (a store's ``manifest.json``, an SAE's ``config.json``, a trainer state's
``trainer_state.json``) records ``"checksums": {file: "xxh3_128:<hex>"}`` for the files next
to it (paths relative to the JSON's folder), computed when the files are written; readers
check a file before its first use. XXH3-128 (the ``xxhash`` package) was chosen by
measurement (``benchmarks/checksum.py``, page cache warm): it hashes a float16 shard in
4–7 % of the time it takes to read it into a float32 array, where SHA-256 takes 50–60 % and
BLAKE2b over 100 %; a float32 shard is read by a bare copy, and XXH3 costs 20–40 % of that.
It detects accidental damage (bit flips, truncation, a stale copy), not tampering.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
CHECKSUMS = "checksums"
"""The key of the ``{file: checksum}`` map in an artifact's JSON."""


def file_checksum(path: str | Path) -> str:
    """``"xxh3_128:<hex>"`` of a file's bytes (read through a memory map: no copy)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        if f.seek(0, 2):  # mmap refuses an empty file
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                h.update(m)
    return f"{ALGORITHM}:{h.hexdigest()}"


def bytes_checksum(data: bytes) -> str:
    """``"xxh3_128:<hex>"`` of ``data`` (equals :func:`file_checksum` of a file holding it)."""
    return f"{ALGORITHM}:{xxhash.xxh3_128(data).hexdigest()}"


def checksum_problem(path: str | Path, expected: str) -> str | None:
    """Why ``path`` does not match ``expected`` (missing, unknown algorithm, damaged), or
    None when it does."""
    path = Path(path)
    algorithm = expected.split(":", 1)[0]
    if algorithm != ALGORITHM:
        return f"{path} has a checksum of an unknown kind ({algorithm}): upgrade vlmsae"
    try:
        found = file_checksum(path)
    except FileNotFoundError:
        return f"{path} is missing"
    if found != expected:
        return (
            f"{path} is damaged: its bytes do not match the checksum recorded when it was "
            "written (changed, truncated or corrupted since)"
        )
    return None
