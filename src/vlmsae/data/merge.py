"""One store from the parts that several ranks wrote (``torchrun … vlmsae cache``).

Rank ``r`` writes the images of its share into an ordinary store at
``STORE/ranks/rank-0000r`` (its own shards, manifest and resume point). When every rank has
closed its part, rank 0 writes ``STORE/manifest.json`` listing every part's shards in rank
order (their files stay where they are, their checksums carried over under their paths),
the concatenated ``rows.npy`` and the image list: readers see one store, with rows in image
order and the same skipped list as a single-process store — only the number and paths of
the shards differ. The manifest is written last, so a crash during the merge leaves an
incomplete store that ``--resume`` finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsae.core.checksum import CHECKSUMS
from vlmsae.core.io import atomic_write, read_json, write_json
from vlmsae.data.format import IMAGES_FILE, MANIFEST, StoreError, write_image_list
from vlmsae.data.integrity import (
    ROWS_FILE,
    has_checksums,
    record_checksums,
    verify_store_file,
)
from vlmsae.data.provenance import image_fingerprint
from vlmsae.data.writer import _np_save

RANKS_DIR = "ranks"


def rank_part_dir(store_dir: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its part of the store ``store_dir``."""
    return Path(store_dir) / RANKS_DIR / f"rank-{rank:05d}"


def check_rank_parts(store_dir: str | Path, world: int) -> None:
    """Refuse to resume a store whose parts were written by a different number of ranks
    (each part covers one share of the images: the shares would not line up)."""
    parts_dir = Path(store_dir) / RANKS_DIR
    found = sorted(p.name for p in parts_dir.glob("rank-*")) if parts_dir.is_dir() else []
    extra = [name for name in found if int(name.split("-")[1]) >= world]
    if extra:
        raise StoreError(
            f"cannot resume {store_dir}: it was written by {len(found)} or more ranks "
            f"({extra[0]} exists) and this run has {world}; resume with the same number of "
            "processes (--nproc-per-node × --nnodes) or start over in another --out"
        )


def merge_rank_parts(store_dir: str | Path, world: int, images: Sequence[str] | None) -> Path:
    """Write the manifest, ``rows.npy`` and image list of ``store_dir`` from the complete
    parts of ranks ``0..world-1`` (see the module docstring). Returns ``store_dir``."""
    store_dir = Path(store_dir)
    manifests = []
    for r in range(world):
        part = rank_part_dir(store_dir, r)
        manifest = read_json(part / MANIFEST) if (part / MANIFEST).exists() else {}
        if not manifest.get("complete"):
            raise StoreError(f"{part} is not complete: rank {r} did not finish its share")
        manifests.append((part.relative_to(store_dir).as_posix(), manifest))
    shards, skipped, rows_parts, checksums = [], [], [], {}
    for prefix, manifest in manifests:
        for shard in manifest["shards"]:
            shards.append({**shard, "file": f"{prefix}/{shard['file']}"})
        checksums.update({f"{prefix}/{f}": c for f, c in manifest.get(CHECKSUMS, {}).items()})
        skipped.extend(manifest.get("skipped", []))
        verify_store_file(store_dir / prefix, manifest, ROWS_FILE)
        rows_parts.append(np.load(store_dir / prefix / ROWS_FILE))
    rows = np.concatenate(rows_parts)
    atomic_write(store_dir / "rows.npy", lambda p: _np_save(p, rows))
    first = manifests[0][1]
    meta: dict[str, Any] = {k: v for k, v in first.items() if k not in _PART_FIELDS}
    if images is not None:
        write_image_list(store_dir, images)
        meta["n_images"] = len(images)
        meta.update(image_fingerprint(images))  # as one process's writer records it
    own = [f for f in (ROWS_FILE, IMAGES_FILE) if (store_dir / f).exists()]
    checksums.update(record_checksums(store_dir, own))
    whole = all(has_checksums(m) for _, m in manifests)  # parts by an older vlmsae have none
    manifest = {
        **meta,
        "n_rows": int(rows.shape[0]),
        "complete": True,
        "n_ranks": world,
        "n_skipped": len(skipped),
        "skipped": sorted(skipped, key=lambda s: s["index"]),
        "shards": shards,
        **({CHECKSUMS: checksums} if whole else {}),
    }
    write_json(store_dir / MANIFEST, manifest)  # last: the store is complete from here on
    return store_dir


_PART_FIELDS = (
    CHECKSUMS,
    "n_rows",
    "complete",
    "n_skipped",
    "skipped",
    "shards",
    "n_images",
    "image_range",
)
