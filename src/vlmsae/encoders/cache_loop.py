"""The caching loop behind :func:`~vlmsae.encoders.cache.cache_activations` and
:func:`~vlmsae.encoders.cache.embed_images`: batches in, rows out to every store, each store
resumed where it stopped; SIGINT / SIGTERM close the current shard and stop; under several
ranks each caches its share and rank 0 merges the parts."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from vlmsae.core import dist
from vlmsae.core.interrupt import graceful_stop
from vlmsae.core.io import write_json
from vlmsae.core.progress import model_label, progress_bar
from vlmsae.data.images import ImageDataset
from vlmsae.data.merge import merge_rank_parts
from vlmsae.data.store import ActivationStore, StoreWriter
from vlmsae.encoders.adapters import Encoder
from vlmsae.encoders.codes import sae_codes
from vlmsae.encoders.loader import ImageBatch, image_batches
from vlmsae.encoders.tokens import TokenSelection, select_tokens

if TYPE_CHECKING:
    from vlmsae.encoders.cache import CacheConfig

log = logging.getLogger(__name__)
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # cast before the copy


class CacheResult(NamedTuple):
    """What a caching run wrote."""

    stores: dict[str, Path]
    """Store directory per hook point name (``layer_11``, ``post_projection``, ``codes_*``)."""
    n_images: int
    """Images in the dataset listing (written or skipped)."""
    n_skipped: int
    """Images that could not be decoded or preprocessed."""
    seconds: float
    """Wall time of this run (not counting earlier interrupted runs)."""
    images_per_s: float
    """Throughput of this run."""


@dataclass
class Target:
    """One store being written: its name, hook point and writer (and the SAE of a code store)."""

    name: str
    key: int | str  # block index or "post_projection"
    writer: StoreWriter
    sae: Any = None  # write SAE codes instead of the activations


def run_cache(
    enc: Encoder,
    data: ImageDataset,
    targets: list[Target],
    selection: TokenSelection,
    cfg: CacheConfig,
    summary_path: Path,
) -> CacheResult:
    """The caching loop shared by :func:`cache_activations` and :func:`embed_images`.

    Under several ranks each caches its share of the images into its part of every store;
    rank 0 then merges the parts (:mod:`vlmsae.data.merge`) and writes the summary."""
    n = len(data)
    share = dist.shard(n)  # range(0, n) in one process
    start = max(share.start, min(t.writer.images_done for t in targets))
    layers = sorted({t.key for t in targets if isinstance(t.key, int)})
    want_projection = any(t.key == "post_projection" for t in targets)
    if start > share.start:
        log.info("resuming at image %d of %d", start, n)
    loader = image_batches(
        data.keys,
        enc.processor,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        start=start,
        stop=share.stop,
        reader=data.open_reader(),
        pin_memory=enc.device.type == "cuda",
    )
    t0 = time.perf_counter()
    bar = progress_bar(
        total=len(share),
        initial=start - share.start,
        unit="img",
        disable=not cfg.progress or not dist.is_main(),
        desc=model_label(enc.name),
    )
    position = start
    first_wait = None  # worker start-up and the first batch's decoding
    with graceful_stop() as stop:
        batches = iter(loader)
        try:
            while not stop.requested:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except RuntimeError:  # a signal also stops the loader's worker processes
                    if stop.requested:
                        break
                    raise
                first_wait = time.perf_counter() - t0 if first_wait is None else first_wait
                _write_batch(enc, batch, targets, layers, want_projection, selection)
                bar.update(batch.end - position)
                position = batch.end
        finally:
            bar.close()
    if stop.requested:  # keep every image done: the current shard closes here
        for t in targets:
            t.writer.flush()
        raise stop.interrupted(f"image {position} of {n} ({share.stop - position} left)")
    seconds = time.perf_counter() - t0
    if dist.is_distributed():
        stores = _merge_parts(targets, data)
    else:
        stores = {t.name: t.writer.close(images=data.paths).dir for t in targets}
    n_done = sum(dist.all_gather_object(position - start))  # images this run, all ranks
    starts = dist.all_gather_object(start)
    rate = n_done / seconds if seconds > 0 else 0.0
    summary = None
    if dist.is_main():
        readers = {name: ActivationStore(path) for name, path in stores.items()}
        summary = {
            "model": enc.name,
            "dataset_root": data.root,
            "split": data.split,
            "n_images": n,
            "n_skipped": max(len(r.manifest.get("skipped", [])) for r in readers.values()),
            "resumed_at": starts[0] if len(starts) == 1 else starts,
            "seconds": round(seconds, 3),
            "first_batch_wait_seconds": round(first_wait or 0.0, 3),
            "images_per_s": round(rate, 3),
            "tokens": str(selection),
            "batch_size": cfg.batch_size,
            "stores": {
                name: {"path": str(r.dir), "rows": len(r), "d": r.d} for name, r in readers.items()
            },
        }
        if dist.is_distributed():
            summary["n_ranks"] = dist.world_size()
        write_json(summary_path, summary)
        log.info(
            "%d images (%d skipped) in %.1f s: %.1f images/s",
            n,
            summary["n_skipped"],
            seconds,
            rate,
        )
    n_skipped, seconds, rate = dist.broadcast_object(  # rank 0's figures on every rank
        (summary["n_skipped"], seconds, rate) if summary is not None else None
    )
    return CacheResult(stores, n, n_skipped, seconds, rate)


def _merge_parts(targets: list[Target], data: ImageDataset) -> dict[str, Path]:
    """Close this rank's part of every store; once all ranks have, rank 0 merges them."""
    with dist.together("caching a share of the images"):
        for t in targets:
            t.writer.close()
    stores = {t.name: t.writer.dir.parent.parent for t in targets}  # STORE/ranks/rank-r
    with dist.together("merging the ranks' parts"):
        if dist.is_main():
            for path in stores.values():
                merge_rank_parts(path, dist.world_size(), data.paths)
    return stores


def _write_batch(
    enc: Encoder,
    batch: ImageBatch,
    targets: list[Target],
    layers: Sequence[int],
    want_projection: bool,
    selection: TokenSelection,
) -> None:
    """Capture one batch and hand each store the rows of images it has not written yet."""
    captured: dict[int | str, torch.Tensor] = {}
    if batch.pixel_values is not None:
        captured = enc.capture(batch.pixel_values, layers, post_projection=want_projection)
    for t in targets:
        writer = t.writer
        if batch.end <= writer.images_done:
            continue  # this store already holds the batch (a resumed run)
        if captured:
            if t.key == "post_projection":
                acts_RD = captured["post_projection"]
                image_R, token_R = batch.index, np.full(len(batch.index), -1, np.int64)
            else:
                tokens_BTD = enc.image_tokens(captured[t.key])  # without register tokens
                acts_RD, image_R, token_R = select_tokens(tokens_BTD, selection, batch.index)
            keep_R = image_R >= writer.images_done
            if keep_R.any():
                if not keep_R.all():
                    acts_RD = acts_RD[torch.as_tensor(keep_R, device=acts_RD.device)]
                    image_R, token_R = image_R[keep_R], token_R[keep_R]
                rows = (
                    sae_codes(t.sae, acts_RD)
                    if t.sae is not None
                    else acts_RD.to(_TORCH_DTYPES[writer.dtype]).cpu().numpy()
                )
                writer.add(rows, image_R, token_R)
        for index, path, reason in batch.skipped:
            if index >= writer.images_done:
                writer.skip(index, path, reason)
        writer.mark(batch.end)
