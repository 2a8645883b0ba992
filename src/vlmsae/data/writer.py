"""Writing an activation store: :class:`ShardWriter` (sharded, atomic, resumable) and
:func:`write_rows` (a whole array at once).

The format is described in :mod:`vlmsae.data.store`. This module knows nothing of the
reader: :class:`vlmsae.data.store.StoreWriter` is a :class:`ShardWriter` whose ``close()``
also opens the store it wrote (so the store imports the writer, never the reverse).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from vlmsae.core.checksum import CHECKSUMS
from vlmsae.core.io import atomic_write, ensure_dir, read_json, remove_stale_temps, write_json
from vlmsae.data.format import IMAGES_FILE, KINDS, MANIFEST, SCHEMA, StoreError, write_image_list
from vlmsae.data.integrity import ROWS_FILE, record_checksums, shard_files
from vlmsae.data.provenance import image_fingerprint

log = logging.getLogger(__name__)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


class ShardWriter:
    """Append rows to a store, one image batch at a time; resumable.

    Call :meth:`add` with the rows of some images, then :meth:`mark` once those images
    are fully written (a safe resume point); :meth:`finish` finalises the store
    (``StoreWriter.close`` finishes it and opens it).

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
        self.checksums: dict[str, str] = {}  # file -> checksum, as written
        self.skipped: list[dict[str, Any]] = []
        self.closed = False
        self._reset_buffer()
        manifest_path = self.dir / MANIFEST
        manifest = read_json(manifest_path) if manifest_path.exists() else None
        if manifest is not None and (manifest.get("complete") or manifest.get("shards")):
            self._open_existing(manifest, resume)
        else:  # new, or interrupted before its first shard: nothing to keep
            if manifest is not None:
                log.info("%s: interrupted before its first shard; starting it over", self.dir)
                self._remove_unlisted_files()
            ensure_dir(self.dir)
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
        self.checksums = dict(manifest.get(CHECKSUMS) or {})
        self.skipped = [s for s in manifest.get("skipped", []) if s["index"] < self.images_done]
        self.closed = bool(manifest.get("complete"))
        self._remove_unlisted_files()
        log.info("resuming %s after %d images (%d rows)", self.dir, self.images_done, self.n_rows)

    def _remove_unlisted_files(self) -> None:
        """Delete shard files the manifest does not list (a shard killed before it was
        listed) and temporary files of interrupted atomic writes."""
        listed = {s["file"].removesuffix(".npy") for s in self.shards}
        for f in self.dir.glob("shard-*"):
            if f.name.split(".")[0] not in listed:
                f.unlink()
        remove_stale_temps(self.dir)

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
            csr = sp.csr_matrix(rows, dtype=np.float32)
            with np.errstate(over="ignore"):  # an overflow to Inf is refused just below
                stored = csr.data.astype(np.dtype(self.dtype))
            _check_finite(stored, "SAE codes")
            self._csr.append(csr)
        else:
            if sp.issparse(rows):
                rows = rows.toarray()
            with np.errstate(over="ignore"):  # an overflow to Inf is refused just below
                values = np.asarray(rows, dtype=np.dtype(self.dtype))
            _check_finite(values, "rows")
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

    def flush(self) -> None:
        """Write the rows buffered so far as a shard now (they end at the last
        :meth:`mark`): an interrupted job keeps them, and ``--resume`` continues after them."""
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
        files = shard_files(entry, self.kind == "codes")
        self.checksums.update(record_checksums(self.dir, files))
        self.shards.append(entry)
        self.skipped.extend(self._pending_skips)
        self._reset_buffer()
        self._write_manifest(complete=False)

    def _empty_csr(self) -> sp.csr_matrix:
        return sp.csr_matrix((0, self.d), dtype=np.float32)

    def finish(self, images: Sequence[str] | None = None, **meta: Any) -> None:
        """Write the last shard, ``rows.npy``, ``images.jsonl`` and the final manifest (with
        the fingerprint of ``images``, see :func:`vlmsae.data.provenance.image_fingerprint`).
        A finished writer does nothing more."""
        if not self.closed:
            if self._buffered or self._pending_skips:
                self._flush()
            self.meta.update(meta)
            if images is not None:  # what later commands check other artifacts against
                self.meta.update(image_fingerprint(images))
            row_parts = [np.load(self._rows_file(s)) for s in self.shards]
            rows = np.concatenate(row_parts) if row_parts else np.zeros((0, 2), np.int64)
            atomic_write(self.dir / ROWS_FILE, lambda p: _np_save(p, rows))
            if images is not None:
                write_image_list(self.dir, images)
                self.meta["n_images"] = len(images)
            own = [ROWS_FILE, *([IMAGES_FILE] if images is not None else [])]
            self.checksums.update(record_checksums(self.dir, own))  # shards': as written
            self._write_manifest(complete=True)
            for s in self.shards:
                self._rows_file(s).unlink(missing_ok=True)
            self.closed = True

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
            CHECKSUMS: self.checksums,
        }
        write_json(self.dir / MANIFEST, manifest)


def write_rows(
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
) -> None:
    """Write an array (or CSR matrix, or an iterable of row blocks) as a complete store;
    the body of ``ActivationStore.write`` (see there)."""
    blocks = [data] if hasattr(data, "shape") else list(data)
    if not blocks:
        raise ValueError("nothing to write: data is empty")
    d = int(blocks[0].shape[1])
    kind = kind or ("codes" if sp.issparse(blocks[0]) else "activations")
    dtype = dtype or ("float16" if blocks[0].dtype == np.float16 else "float32")
    writer = ShardWriter(path, d, kind=kind, dtype=dtype, shard_rows=shard_rows, meta=meta)
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
    writer.finish(images=images)


def _check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN / Inf before they reach a shard (float16 overflow becomes Inf here)."""
    if not np.isfinite(values).all():
        raise ValueError(
            f"{what} contain NaN or Inf (after conversion to the store dtype); a store must "
            "hold finite numbers — check the model or SAE weights, or store float32"
        )


def _np_save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda p: _np_save(p, arr))
