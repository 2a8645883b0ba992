"""The activation store: sharded ``.npy`` arrays on disk plus a ``manifest.json``.

One format serves raw activations, embeddings (``kind="embeddings"``) and sparse SAE
codes (``kind="codes"``, CSR per shard). See DESIGN.md, "Files on disk".

Layout of a store directory::

    manifest.json        schema, kind, d, n_rows, dtype, shards, complete, provenance
    shard-00000.npy      dense rows x d (activations, embeddings)
    shard-00000.{indptr,indices,values}.npy   CSR arrays (codes)
    rows.npy             int64 [n_rows, 2]: image index, token index (-1 = pooled row)
    images.txt           image path per image index

A shard always ends at an image boundary and records ``images_end``: how many dataset
images had been consumed (written or skipped) when it was closed. A writer that is
interrupted resumes from the last shard listed in the manifest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from vlmsae._io import atomic_write, atomic_write_text, read_json, write_json

SCHEMA = 1
KINDS = ("activations", "embeddings", "codes")
DTYPES = ("float16", "float32", "bfloat16")
MANIFEST = "manifest.json"
CSR_PARTS = ("indptr", "indices", "values")
log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store directory is missing, incomplete or inconsistent."""


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


class StoreWriter:
    """Append rows to a store, one image batch at a time; resumable.

    Call :meth:`add` with the rows of some images, then :meth:`mark` once those images
    are fully written (a safe resume point); :meth:`close` finalises the store.

    Args:
        out_dir: store directory (created).
        d: row width.
        kind: ``"activations"``, ``"embeddings"`` or ``"codes"`` (sparse CSR rows).
        dtype: on-disk dtype of values, ``"float16"`` or ``"float32"``.
        shard_rows: a shard is closed at the first image boundary after this many rows.
        meta: provenance fields stored in the manifest (model, hook point, layer, ...).
        resume: continue an incomplete store in ``out_dir`` instead of refusing it.
    """

    def __init__(
        self,
        out_dir: str | Path,
        d: int,
        *,
        kind: str = "activations",
        dtype: str = "float32",
        shard_rows: int = 1 << 16,
        meta: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"store dtype must be float16 or float32, got {dtype!r}")
        if d <= 0 or shard_rows <= 0:
            raise ValueError(
                f"d and shard_rows must be positive, got d={d}, shard_rows={shard_rows}"
            )
        self.dir = Path(out_dir)
        self.d, self.kind, self.dtype, self.shard_rows = int(d), kind, dtype, int(shard_rows)
        self.meta = dict(meta or {})
        self.shards: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.closed = False
        self._reset_buffer()
        manifest_path = self.dir / MANIFEST
        if manifest_path.exists():
            self._open_existing(read_json(manifest_path), resume)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write_manifest(complete=False)
        self._images_end = self.images_done

    # -- state -------------------------------------------------------------------------
    def _reset_buffer(self) -> None:
        self._values: list[np.ndarray] = []
        self._csr: list[sp.csr_matrix] = []
        self._rows: list[np.ndarray] = []
        self._pending_skips: list[dict[str, Any]] = []
        self._buffered = 0

    def _open_existing(self, manifest: dict[str, Any], resume: bool) -> None:
        if manifest.get("complete") and not resume:
            raise FileExistsError(
                f"{self.dir} already holds a complete store; choose another --out or delete it"
            )
        if not manifest.get("complete") and not resume:
            raise FileExistsError(
                f"{self.dir} holds an interrupted store; pass resume=True (--resume) to continue "
                "it, or delete the directory"
            )
        for key, want in (("d", self.d), ("kind", self.kind), ("dtype", self.dtype)):
            if manifest[key] != want:
                raise StoreError(
                    f"cannot resume {self.dir}: its {key} is {manifest[key]!r}, "
                    f"this run writes {want!r}"
                )
        self.shards = list(manifest["shards"])
        self.skipped = [s for s in manifest.get("skipped", []) if s["index"] < self.images_done]
        self.closed = bool(manifest.get("complete"))
        listed = {s["file"].removesuffix(".npy") for s in self.shards}
        for f in self.dir.glob("shard-*"):  # files of a shard that never made the manifest
            if f.name.split(".")[0] not in listed:
                f.unlink()
        for f in self.dir.glob(".shard-*.tmp"):  # a write killed half-way
            f.unlink()
        log.info("resuming %s after %d images (%d rows)", self.dir, self.images_done, self.n_rows)

    @property
    def images_done(self) -> int:
        """Dataset images consumed (written or skipped) up to the last complete shard."""
        return int(self.shards[-1]["images_end"]) if self.shards else 0

    @property
    def n_rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    # -- writing -----------------------------------------------------------------------
    def add(
        self,
        rows: np.ndarray | sp.spmatrix | sp.sparray,
        image_index: np.ndarray | Sequence[int],
        token_index: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Buffer ``rows`` (dense ``[n, d]``, or CSR for a code store) with their image and
        token indices (token -1 means a pooled row)."""
        assert not self.closed, "store already closed"
        n = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.d:
            raise ValueError(
                f"rows have shape {tuple(rows.shape)}, the store's width d is {self.d}"
            )
        image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
        token_index = (
            np.full(n, -1, np.int64)
            if token_index is None
            else np.asarray(token_index, dtype=np.int64).reshape(-1)
        )
        if len(image_index) != n or len(token_index) != n:
            raise ValueError(
                f"{n} rows but {len(image_index)} image and {len(token_index)} token indices"
            )
        if self.kind == "codes":
            # scipy.sparse has no float16: buffer in float32, cast the values when written
            self._csr.append(sp.csr_matrix(rows, dtype=np.float32))
        else:
            if sp.issparse(rows):
                rows = rows.toarray()
            values = np.asarray(rows, dtype=np.dtype(self.dtype))
            if not np.isfinite(values).all():
                raise ValueError("rows contain NaN or Inf (after conversion to the store dtype)")
            self._values.append(values)
        self._rows.append(np.stack([image_index, token_index], axis=1))
        self._buffered += n

    def skip(self, image_index: int, path: str, reason: str) -> None:
        """Record an image that could not be used (kept in the manifest's ``skipped``)."""
        self._pending_skips.append({"index": int(image_index), "path": str(path), "reason": reason})

    def mark(self, images_end: int) -> None:
        """Declare that the first ``images_end`` dataset images are fully added; a shard is
        written when enough rows are buffered."""
        self._images_end = int(images_end)
        if self._buffered >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffered == 0 and not self._pending_skips:
            return
        name = _shard_name(len(self.shards))
        try:
            if self.kind == "codes":
                matrix = sp.vstack(self._csr, format="csr") if self._csr else self._empty_csr()
                parts = {
                    "indptr": matrix.indptr.astype(np.int64),
                    "indices": matrix.indices.astype(np.int32),
                    "values": matrix.data.astype(np.dtype(self.dtype)),
                }
                for part, arr in parts.items():
                    _save_npy(self.dir / f"{name}.{part}.npy", arr)
                entry = {"file": name, "rows": self._buffered, "nnz": int(matrix.nnz)}
            else:
                values = (
                    np.concatenate(self._values)
                    if self._values
                    else np.zeros((0, self.d), np.dtype(self.dtype))
                )
                _save_npy(self.dir / f"{name}.npy", values)
                entry = {"file": f"{name}.npy", "rows": self._buffered}
            rows = np.concatenate(self._rows) if self._rows else np.zeros((0, 2), np.int64)
            _save_npy(self.dir / f"{name}.rows.npy", rows)
        except OSError as e:
            for f in self.dir.glob(f"{name}*"):
                f.unlink(missing_ok=True)
            raise StoreError(
                f"could not write {name} in {self.dir} ({e.strerror or e}); the store stays "
                f"resumable after {self.images_done} images — free space and rerun with --resume"
            ) from e
        entry["images_end"] = self._images_end
        self.shards.append(entry)
        self.skipped.extend(self._pending_skips)
        self._reset_buffer()
        self._write_manifest(complete=False)

    def _empty_csr(self) -> sp.csr_matrix:
        return sp.csr_matrix((0, self.d), dtype=np.float32)

    def close(self, images: Sequence[str] | None = None, **meta: Any) -> ActivationStore:
        """Write the last shard, ``rows.npy``, ``images.txt`` and the final manifest."""
        if not self.closed:
            if self._buffered or self._pending_skips:
                self._flush()
            self.meta.update(meta)
            row_parts = [np.load(self._rows_file(s)) for s in self.shards]
            rows = np.concatenate(row_parts) if row_parts else np.zeros((0, 2), np.int64)
            atomic_write(self.dir / "rows.npy", lambda p: _np_save(p, rows))
            if images is not None:
                atomic_write_text(self.dir / "images.txt", "".join(f"{p}\n" for p in images))
                self.meta["n_images"] = len(images)
            self._write_manifest(complete=True)
            for s in self.shards:
                self._rows_file(s).unlink(missing_ok=True)
            self.closed = True
        return ActivationStore(self.dir)

    def _rows_file(self, shard: dict[str, Any]) -> Path:
        return self.dir / f"{shard['file'].removesuffix('.npy')}.rows.npy"

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "schema": SCHEMA,
            "kind": self.kind,
            "d": self.d,
            "n_rows": self.n_rows,
            "dtype": self.dtype,
            "complete": complete,
            **{k: v for k, v in self.meta.items() if k not in ("skipped",)},
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
            "shards": self.shards,
        }
        write_json(self.dir / MANIFEST, manifest)


def _np_save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda p: _np_save(p, arr))


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
        return np.load(self.dir / "rows.npy", mmap_mode="r")

    @property
    def images(self) -> list[str]:
        """Image path per image index (empty when the store was written without them)."""
        path = self.dir / "images.txt"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def image_rows(self, image_index: int) -> slice:
        """Row range of one image (rows are stored image by image, in order)."""
        image_col = self.rows[:, 0]
        lo, hi = np.searchsorted(image_col, [image_index, image_index + 1])
        return slice(int(lo), int(hi))

    # -- access ------------------------------------------------------------------------
    def _shard(self, i: int) -> Any:
        if i not in self._cache:
            name = self.shards[i]["file"]
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
    ) -> Iterator[np.ndarray]:
        """Yield ``[batch_size, d]`` arrays, epoch after epoch (forever if ``epochs`` is None).

        Shuffling is two-level so that memory stays bounded: contiguous chunks of
        ``chunk_rows`` rows are visited in a random order, ``buffer_rows`` rows at a time,
        and rows are permuted inside each buffer. The stream is a pure function of
        ``seed``; ``skip`` drops the first ``skip`` batches without reading them (exact
        resumption). Rows left over at the end of a buffer (fewer than ``batch_size``)
        are dropped for that epoch.
        """
        if self.is_sparse:
            raise StoreError("batches() reads dense stores; code stores are read with read()")
        n = len(self)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the store ({n} rows)")
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
                n_batches = int(sizes.sum()) // batch_size
                perm_seed = rng.integers(1 << 62)  # drawn even when skipped: same stream
                if skip >= n_batches:
                    skip -= n_batches
                    continue
                buf = np.concatenate([self.read(int(s), int(s) + chunk_rows) for s in starts])
                order = (
                    np.random.default_rng(perm_seed).permutation(len(buf))
                    if shuffle
                    else np.arange(len(buf))
                )
                for j in range(skip, n_batches):
                    yield np.asarray(buf[order[j * batch_size : (j + 1) * batch_size]], dtype=dtype)
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
    ) -> ActivationStore:
        """Write an array (or CSR matrix, or an iterable of row blocks) as a store.

        Without ``image_index`` every row is its own image. For small arrays and tests;
        long jobs use :class:`StoreWriter` directly.
        """
        blocks = [data] if hasattr(data, "shape") else list(data)
        if not blocks:
            raise ValueError("nothing to write: data is empty")
        d = int(blocks[0].shape[1])
        kind = kind or ("codes" if sp.issparse(blocks[0]) else "activations")
        dtype = dtype or ("float16" if blocks[0].dtype == np.float16 else "float32")
        writer = StoreWriter(path, d, kind=kind, dtype=dtype, shard_rows=shard_rows, meta=meta)
        start = 0
        for block in blocks:
            for lo in range(0, block.shape[0], shard_rows):
                piece = block[lo : lo + shard_rows]
                n = piece.shape[0]
                img = (
                    np.arange(start, start + n)
                    if image_index is None
                    else image_index[start : start + n]
                )
                tok = None if token_index is None else token_index[start : start + n]
                writer.add(piece, img, tok)
                start += n
                writer.mark(int(img[-1]) + 1)
        return writer.close()
