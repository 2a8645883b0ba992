"""The activation store: sharded ``.npy`` arrays on disk plus a ``manifest.json``.

One format serves raw activations, embeddings (``kind="embeddings"``) and sparse SAE
codes (``kind="codes"``, CSR per shard). See DESIGN.md, "Files on disk".

Layout of a store directory::

    manifest.json        schema, kind, d, n_rows, dtype, shards, complete, provenance
    shard-00000.npy      dense rows x d (activations, embeddings)
    shard-00000.{indptr,indices,values}.npy   CSR arrays (codes)
    rows.npy             int64 [n_rows, 2]: image index, token index (-1 = pooled row)
    images.jsonl         image path per image index, one JSON string per line
                         (stores written before it have images.txt, one path per line)

A shard always ends at an image boundary and records ``images_end``: how many dataset
images had been consumed (written or skipped) when it was closed. A writer that is
interrupted resumes from the last shard listed in the manifest. The manifest's
``checksums`` cover every file; a reader checks each file before its first read
(:mod:`vlmsae.data.integrity`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from vlmsae.core.io import read_json
from vlmsae.data.format import (
    CSR_PARTS,
    DTYPES,
    IMAGES_FILE,
    KINDS,
    MANIFEST,
    SCHEMA,
    StoreError,
    read_image_list,
)
from vlmsae.data.integrity import (
    ROWS_FILE,
    data_files,
    has_checksums,
    shape_problems,
    shard_files,
    verify_store_file,
    warn_unverified,
)
from vlmsae.data.writer import ShardWriter, write_rows

__all__ = [
    "CSR_PARTS",
    "DTYPES",
    "KINDS",
    "MANIFEST",
    "SCHEMA",
    "ActivationStore",
    "StoreError",
    "StoreWriter",
]
log = logging.getLogger(__name__)


class ActivationStore:
    """Read a store: random access, in-order chunks, shuffled batches with bounded memory.

    ``store[i:j]`` returns a ``np.ndarray [j - i, d]`` in the stored dtype (a
    ``scipy.sparse.csr_matrix`` for a code store). Shards are memory-mapped: nothing is
    read until it is indexed.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.dir = Path(path)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.exists():
            raise StoreError(
                f"{self.dir} is not a store: no {MANIFEST} (was it written by vlmsae?)"
            )
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if self.manifest.get("schema", 0) > SCHEMA:
            raise StoreError(
                f"{self.dir} has store schema {self.manifest['schema']}; this vlmsae reads up to "
                f"{SCHEMA} — upgrade vlmsae"
            )
        if not self.manifest["complete"] and not allow_incomplete:
            raise StoreError(
                f"{self.dir} is incomplete (an interrupted run); finish it with --resume first"
            )
        self.shards = self.manifest["shards"]
        self._offsets = np.cumsum([0] + [int(s["rows"]) for s in self.shards])
        self._cache: dict[int, Any] = {}
        self._verified: set[str] = set()  # files checked against their checksums
        self._check_shapes()
        if self.manifest["complete"] and not has_checksums(self.manifest):
            warn_unverified(self.dir)

    def _check_shapes(self) -> None:
        """Refuse a manifest that does not match its files' headers (rows, width, CSR
        lengths) or sizes (truncation): reading past a shard's end would silently give
        short or empty batches, or fail in the middle of a computation."""
        problems = shape_problems(self.dir, self.manifest, len(self))
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise StoreError(
                f"{self.dir} does not match its {MANIFEST}: {'; '.join(problems[:3])}{more}; "
                "the store was changed or damaged after it was written: recreate it"
            )

    def verify(self) -> None:
        """Check every file of the store against its checksum now (a :class:`StoreError`
        naming the first damaged one); reads otherwise check each file on first use."""
        for name in data_files(self.dir, self.manifest):
            self._verify(name)

    def _verify(self, name: str) -> None:
        """Check ``name`` against its checksum before its first read by this object."""
        if name not in self._verified:
            verify_store_file(self.dir, self.manifest, name)
            self._verified.add(name)

    # -- metadata ----------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def is_sparse(self) -> bool:
        return self.kind == "codes"

    @property
    def _csr_dtype(self) -> np.dtype:
        """dtype of CSR values in memory: scipy.sparse has no float16, so float16 codes
        are read as float32."""
        return np.dtype(np.float32) if self.dtype == np.float16 else self.dtype

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.dir)!r}, kind={self.kind}, rows={len(self)}, d={self.d})"

    @property
    def rows(self) -> np.ndarray:
        """``int64 [n_rows, 2]``: image index and token index (-1 = pooled) of every row."""
        self._verify(ROWS_FILE)
        return np.load(self.dir / "rows.npy", mmap_mode="r")

    @property
    def images(self) -> list[str]:
        """Image path per image index (empty when the store was written without them)."""
        if (self.dir / IMAGES_FILE).exists():
            self._verify(IMAGES_FILE)
        return read_image_list(self.dir)

    def image_rows(self, image_index: int) -> slice:
        """Row range of one image (rows are stored image by image, in order)."""
        image_col = self.rows[:, 0]
        lo, hi = np.searchsorted(image_col, [image_index, image_index + 1])
        return slice(int(lo), int(hi))

    # -- access ------------------------------------------------------------------------
    def _shard(self, i: int) -> Any:
        if i not in self._cache:
            name = self.shards[i]["file"]
            for file in shard_files(self.shards[i], self.is_sparse):
                self._verify(file)
            if self.is_sparse:
                parts = [np.load(self.dir / f"{name}.{p}.npy", mmap_mode="r") for p in CSR_PARTS]
                self._cache[i] = tuple(parts)
            else:
                self._cache[i] = np.load(self.dir / name, mmap_mode="r")
        return self._cache[i]

    def _shard_rows(self, i: int, lo: int, hi: int) -> Any:
        shard = self._shard(i)
        if not self.is_sparse:
            return shard[lo:hi]
        indptr, indices, values = shard
        a, b = int(indptr[lo]), int(indptr[hi])
        return sp.csr_matrix(
            (
                np.asarray(values[a:b], dtype=self._csr_dtype),
                np.asarray(indices[a:b]),
                np.asarray(indptr[lo : hi + 1]) - a,
            ),
            shape=(hi - lo, self.d),
        )

    def _concat(self, parts: list[Any]) -> Any:
        if self.is_sparse:
            return (
                sp.vstack(parts, format="csr")
                if parts
                else sp.csr_matrix((0, self.d), dtype=self._csr_dtype)
            )
        return np.concatenate(parts) if parts else np.zeros((0, self.d), self.dtype)

    def read(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` as one array (dense) or CSR matrix (codes)."""
        start, stop = max(0, start), min(len(self), stop)
        parts = []
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for i in range(max(first, 0), len(self.shards)):
            lo, hi = self._offsets[i], self._offsets[i + 1]
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if b > a:
                parts.append(
                    np.asarray(self._shard_rows(i, int(a), int(b)))
                    if not self.is_sparse
                    else self._shard_rows(i, int(a), int(b))
                )
        return self._concat(parts)

    def __getitem__(self, key: int | slice | np.ndarray) -> Any:
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"row {key} out of range for a store of {len(self)} rows")
            return self.read(k, k + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            out = self.read(start, stop)
            return out if step == 1 else out[::step]
        idx = np.asarray(key, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        shard_of = np.searchsorted(self._offsets, sorted_idx, side="right") - 1
        parts = []
        for i in np.unique(shard_of):
            local = sorted_idx[shard_of == i] - self._offsets[i]
            shard = self._shard(int(i))
            parts.append(shard[local] if not self.is_sparse else self._shard_rows_at(int(i), local))
        out = self._concat(parts)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return out[inverse]

    def _shard_rows_at(self, i: int, local: np.ndarray) -> sp.csr_matrix:
        lo, hi = int(local.min()), int(local.max()) + 1
        return self._shard_rows(i, lo, hi)[local - lo]

    def iter_chunks(self, chunk_rows: int = 1 << 15) -> Iterator[tuple[int, Any]]:
        """Yield ``(start_row, rows)`` in order, ``chunk_rows`` at a time."""
        for start in range(0, len(self), chunk_rows):
            yield start, self.read(start, start + chunk_rows)

    def to_numpy(self, dtype: Any = np.float32) -> np.ndarray:
        """The whole store as one dense array (for small stores only)."""
        if self.is_sparse:
            return self.read(0, len(self)).toarray().astype(dtype)
        return self.read(0, len(self)).astype(dtype, copy=False)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        skip: int = 0,
        buffer_rows: int = 1 << 18,
        chunk_rows: int = 1 << 13,
        epochs: int | None = None,
        dtype: Any = np.float32,
        drop_last: bool = False,
        part: range | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``[batch_size, d]`` arrays, epoch after epoch (forever if ``epochs`` is None).

        Shuffling is two-level so that memory stays bounded: contiguous chunks of
        ``chunk_rows`` rows are visited in a random order, ``buffer_rows`` rows at a time,
        and rows are permuted inside each buffer. The stream is a pure function of
        ``seed``; ``skip`` drops the first ``skip`` batches without reading them (exact
        resumption).

        The rows of a buffer rarely divide into whole batches. ``drop_last=False`` (the
        default) yields the rest as a smaller last batch, so that every row is yielded
        exactly once per epoch (one short batch per buffer; a store of up to
        ``buffer_rows`` rows has one buffer). ``drop_last=True`` drops those rows for that
        epoch (fewer than ``batch_size`` per buffer; shuffling drops other rows each
        epoch), so that every batch has ``batch_size`` rows: SAE training does this (e.g.
        10,000 rows at batch 4,096 give two batches per epoch and leave 1,808 rows out).
        ``part``: yield only these positions of every batch, reading only their rows (a
        data-parallel rank's slice of the global batch).
        """
        if self.is_sparse:
            raise StoreError("batches() reads dense stores; code stores are read with read()")
        n = len(self)
        if batch_size > n and drop_last:
            raise ValueError(
                f"batch_size {batch_size} is larger than the store ({n} rows): with "
                "drop_last=True no batch would be yielded"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        buffer_rows = max(buffer_rows, batch_size)
        chunk_rows = min(chunk_rows, buffer_rows)
        epoch = 0
        while epochs is None or epoch < epochs:
            rng = np.random.default_rng([seed, epoch])
            chunk_starts = np.arange(0, n, chunk_rows)
            if shuffle:
                rng.shuffle(chunk_starts)
            per_buffer = max(1, buffer_rows // chunk_rows)
            for b in range(0, len(chunk_starts), per_buffer):
                starts = chunk_starts[b : b + per_buffer]
                sizes = np.minimum(starts + chunk_rows, n) - starts
                n_batches = -(-int(sizes.sum()) // batch_size)  # the last one may be short
                if drop_last:
                    n_batches = int(sizes.sum()) // batch_size
                perm_seed = rng.integers(1 << 62)  # drawn even when skipped: same stream
                if skip >= n_batches:
                    skip -= n_batches
                    continue
                if part is not None:  # rows of the buffer by position, read on demand
                    spans = zip(starts, sizes, strict=True)
                    buf = np.concatenate([np.arange(s, s + z) for s, z in spans])
                else:
                    buf = np.concatenate([self.read(int(s), int(s) + chunk_rows) for s in starts])
                order = (
                    np.random.default_rng(perm_seed).permutation(len(buf))
                    if shuffle
                    else np.arange(len(buf))
                )
                for j in range(skip, n_batches):
                    sel = order[j * batch_size : (j + 1) * batch_size]
                    if part is not None:
                        yield np.asarray(self[buf[sel[part.start : part.stop]]], dtype=dtype)
                        continue
                    yield np.asarray(buf[sel], dtype=dtype)
                skip = 0
            epoch += 1

    # -- convenience -------------------------------------------------------------------
    @classmethod
    def write(
        cls,
        path: str | Path,
        data: np.ndarray | sp.spmatrix | Iterable[np.ndarray],
        meta: dict[str, Any] | None = None,
        *,
        kind: str | None = None,
        dtype: str | None = None,
        shard_rows: int = 1 << 16,
        image_index: np.ndarray | None = None,
        token_index: np.ndarray | None = None,
        images: Sequence[str] | None = None,
    ) -> ActivationStore:
        """Write an array (or CSR matrix, or an iterable of row blocks) as a store.

        Without ``image_index`` every row is its own image; ``images`` lists the image paths
        (by image index; recorded with their fingerprint). For small arrays and tests;
        long jobs use :class:`StoreWriter` directly.
        """
        write_rows(
            path,
            data,
            meta,
            kind=kind,
            dtype=dtype,
            shard_rows=shard_rows,
            image_index=image_index,
            token_index=token_index,
            images=images,
        )
        return cls(path)


class StoreWriter(ShardWriter):
    """Append rows to a store, one image batch at a time; resumable.

    Call :meth:`add` with the rows of some images, then :meth:`mark` once those images
    are fully written (a safe resume point); :meth:`close` finalises the store and opens it.
    The writing is :class:`~vlmsae.data.writer.ShardWriter`'s (arguments there).
    """

    def close(self, images: Sequence[str] | None = None, **meta: Any) -> ActivationStore:
        """:meth:`~vlmsae.data.writer.ShardWriter.finish` the store, then open it."""
        self.finish(images, **meta)
        return ActivationStore(self.dir)
