"""Where training batches come from: a tensor, an activation store, or any iterable.

Every source yields ``[batch_size, d]`` float32 tensors as a pure function of
``(seed, skip)``, so a resumed run sees exactly the batches an uninterrupted one would
(for an iterable, exactness is the caller's: it must replay the same batches).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmsae.core import dist
from vlmsae.data.provenance import PROVENANCE_FIELDS, store_provenance
from vlmsae.data.store import ActivationStore
from vlmsae.sae.config import CONFIG_SOURCE_FIELDS
from vlmsae.train.config import TrainConfig

log = logging.getLogger(__name__)
Data = Tensor | np.ndarray | str | Path | ActivationStore | Iterable[Any]


@dataclass
class BatchSource:
    """A resolved training data source."""

    d: int | None
    """Row width when known up front (``None`` for an iterable)."""
    n_rows: int | None
    """Rows available (``None`` for an iterable)."""
    batches: Any
    """``batches(batch_size, seed, skip) -> Iterator[Tensor]``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance copied from a store manifest (model, hook point, layer, tokens)."""
    description: str = ""
    replayable: bool = True
    """``batches`` can be called more than once (``False`` for a one-shot iterator)."""
    provenance: dict[str, Any] | None = None
    """What a store's rows were made from (``config.json``'s ``source`` block of the SAE)."""
    part_batches: Any = None
    """``part_batches(batch_size, seed, skip, part) -> Iterator[Tensor]``: only the
    positions ``part`` of every batch, reading only those rows (a store); else ``None``."""


def _as_tensor(rows: Any) -> Tensor:
    if isinstance(rows, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    if isinstance(rows, Tensor):
        return rows.float()
    raise TypeError(f"a batch must be a Tensor or np.ndarray, got {type(rows).__name__}")


def _tensor_batches(x_ND: Tensor, batch_size: int, seed: int, skip: int) -> Iterator[Tensor]:
    n = x_ND.shape[0]
    per_epoch = n // batch_size  # the last partial batch of an epoch is dropped
    epoch, start = divmod(skip, per_epoch)
    while True:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        for i in range(start, per_epoch):
            yield _as_tensor(x_ND[perm[i * batch_size : (i + 1) * batch_size]])
        start, epoch = 0, epoch + 1


def _iterable_batches(data: Iterable[Any], skip: int) -> Iterator[Tensor]:
    for batch in itertools.islice(iter(data), skip, None):
        yield _as_tensor(batch)


def make_source(data: Data) -> BatchSource:
    """Resolve ``data`` (tensor / array ``[N, d]``, store directory or object, iterable)."""
    if isinstance(data, (str, Path)):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        store = data
        if store.is_sparse:
            raise ValueError(f"{store.dir} holds SAE codes; train on an activation store")

        def store_batches(
            batch_size: int, seed: int, skip: int, part: range | None = None
        ) -> Iterator[Tensor]:
            # every training batch has batch_size rows; a buffer's leftover rows wait for
            # the next epoch (a different set each epoch)
            batches = store.batches(
                batch_size, shuffle=True, seed=seed, skip=skip, drop_last=True, part=part
            )
            for rows in batches:
                yield torch.from_numpy(rows)

        meta = {
            k: store.manifest[k] for k in CONFIG_SOURCE_FIELDS if store.manifest.get(k) is not None
        }
        prov = store_provenance(store)
        return BatchSource(
            store.d,
            len(store),
            store_batches,
            meta,
            f"store {store.dir}",
            provenance={
                **{k: prov.get(k) for k in (*PROVENANCE_FIELDS, "store")},
                **content_fingerprint(store.manifest),
            },
            part_batches=store_batches,
        )
    if isinstance(data, (Tensor, np.ndarray)):
        if data.ndim != 2:
            raise ValueError(f"training data must be 2-D [rows, d_in], got shape {data.shape}")
        x_ND = data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))

        def tensor_batches(batch_size: int, seed: int, skip: int) -> Iterator[Tensor]:
            return _tensor_batches(x_ND, batch_size, seed, skip)

        return BatchSource(x_ND.shape[1], x_ND.shape[0], tensor_batches, {}, "tensor")
    if isinstance(data, Iterable):

        def iter_batches(batch_size: int, seed: int, skip: int) -> Iterator[Tensor]:
            return _iterable_batches(data, skip)

        one_shot = isinstance(data, Iterator)  # a generator: a second pass finds it empty
        return BatchSource(None, None, iter_batches, {}, "iterable", replayable=not one_shot)
    raise TypeError(
        f"cannot train on {type(data).__name__}: pass a Tensor [N, d_in], an activation-store "
        "directory, an ActivationStore, or an iterable of batches"
    )


def fit_config(cfg: TrainConfig, source: BatchSource) -> TrainConfig:
    """``cfg`` with the SAE's provenance fields (hook point, layer, ...) that it leaves
    unset filled from the data's manifest.

    Raises:
        ValueError: the data's rows are not ``d_in`` wide.
    """
    if source.d is not None and source.d != cfg.sae.d_in:
        raise ValueError(
            f"the data ({source.description}) has width {source.d} but the SAE config has "
            f"d_in={cfg.sae.d_in}; set d_in={source.d}"
        )
    meta = {k: v for k, v in source.meta.items() if getattr(cfg.sae, k) is None}
    return replace(cfg, sae=replace(cfg.sae, **meta)) if meta else cfg


def check_batch_size(batch_size: int, source: BatchSource) -> None:
    """Raises ``ValueError`` when ``source`` has fewer rows than a batch, or a batch has fewer
    rows than there are ranks (every rank needs at least one row of each batch)."""
    if source.n_rows is not None and batch_size > source.n_rows:
        raise ValueError(f"batch_size {batch_size} exceeds the {source.n_rows} rows of data")
    if batch_size < dist.world_size():
        raise ValueError(
            f"batch_size {batch_size} is smaller than the {dist.world_size()} ranks; give "
            "every rank at least one row of each batch"
        )


def shard_source(source: BatchSource) -> BatchSource:
    """This rank's contiguous slice of every global batch of ``source`` (data parallel: the
    slices of all ranks, in rank order, are the batch one process would train on); the
    source itself in one process."""
    if not dist.is_distributed():
        return source

    def rank_batches(batch_size: int, seed: int, skip: int) -> Iterator[Tensor]:
        if source.part_batches is not None:  # read only this rank's rows
            yield from source.part_batches(batch_size, seed, skip, dist.shard(batch_size))
            return
        for x_BD in source.batches(batch_size, seed, skip):
            part = dist.shard(x_BD.shape[0])
            yield x_BD[part.start : part.stop]

    return replace(source, batches=rank_batches)


def estimate_norm_factor(source: BatchSource, batch_size: int, seed: int, n_batches: int) -> float:
    """The scale that gives the training data unit mean squared norm: ``sqrt`` of the mean
    over up to ``n_batches`` batches (the first ones of the training order, at most one
    epoch) of each batch's mean ``‖x‖²`` — dictionary_learning's ``get_norm_factor``.

    Raises:
        ValueError: the source is a one-shot iterator (reading it here would leave nothing
            to train on), it is empty, or its rows are all zero or not finite.
    """
    if not source.replayable:
        raise ValueError(
            "normalize_activations needs to read the data twice (once for the scale); the data "
            "is a one-shot iterator: pass a list, tensor or store, or normalize_activations=False"
        )
    total, n_seen, rows = 0.0, 0, 0
    for x_BD in itertools.islice(source.batches(batch_size, seed, 0), n_batches):
        total += float(dist.mean(x_BD.float().pow(2).sum(-1)))  # over the global batch
        n_seen, rows = n_seen + 1, rows + dist.batch_share(x_BD.shape[0])[1]
        if source.n_rows is not None and rows >= source.n_rows:
            break  # a whole epoch read: more batches would only repeat rows
    if n_seen == 0:
        raise ValueError(f"no training data in {source.description}")
    scale = math.sqrt(total / n_seen)
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(
            f"cannot normalise {source.description}: the mean squared norm of its rows is "
            f"{total / n_seen} (NaN, Inf or all-zero rows); check the data"
        )
    return scale


def load_rows(data: Data, n_rows: int, d: int | None = None) -> Tensor:
    """Up to ``n_rows`` rows of ``data`` as one float32 tensor (a held-out set).

    A store contributes rows spread evenly over its length (not just its first shard).

    Raises:
        ValueError: the rows are not ``d`` wide (when ``d`` is given).
    """
    rows = _load_rows(data, n_rows)
    if d is not None and rows.shape[1] != d:
        raise ValueError(f"validation rows have width {rows.shape[1]}, d_in is {d}")
    return rows


def _load_rows(data: Data, n_rows: int) -> Tensor:
    if isinstance(data, (str, Path)):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        idx = np.unique(np.linspace(0, len(data) - 1, min(n_rows, len(data))).astype(np.int64))
        return torch.from_numpy(np.asarray(data[idx], dtype=np.float32))
    if isinstance(data, (Tensor, np.ndarray)):
        return _as_tensor(data[:n_rows])
    parts, total = [], 0
    for batch in data:
        parts.append(_as_tensor(batch))
        total += parts[-1].shape[0]
        if total >= n_rows:
            break
    return torch.cat(parts)[:n_rows]


def content_fingerprint(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{"rows_sha256": ...}``: a hash of a store's rows (the checksums its manifest records
    for every file), so that a store cached again under the same path with other images or
    activations is told apart from the one a run was trained on; ``{}`` for an older store
    without checksums."""
    checksums = manifest.get("checksums")
    if not checksums:
        return {}
    text = json.dumps(sorted(checksums.items()))
    return {
        "rows_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_rows": manifest.get("n_rows"),
    }


def cached_norm_factor(
    source: BatchSource, cfg: TrainConfig, cache: dict[tuple[int, int, int], float] | None
) -> float:
    """The input scale (unit mean squared norm), estimated once per ``(batch_size, seed,
    norm_batches)`` of a read of the data."""
    cache = {} if cache is None else cache
    key = (cfg.batch_size, cfg.seed, cfg.norm_batches)
    if key not in cache:
        cache[key] = estimate_norm_factor(source, *key)
    log.info("inputs are divided by %.6g (unit mean squared norm)", cache[key])
    return cache[key]
