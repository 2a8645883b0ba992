"""Cache activations and embeddings of a vision model to activation stores.

``cache_activations`` runs the model once per batch, captures every requested hook point
in that pass (stopping after the deepest block needed) and writes one store per hook point::

    OUT/layer_11/          post_mlp_residual of block 11 (an activation store)
    OUT/layer_23/          ... one store per --layer
    OUT/post_projection/   image embeddings (one row per image)
    OUT/codes_layer_11/    with an SAE: its codes at that hook point (kind="codes", CSR)
    OUT/summary.json       images, skipped, seconds, images/s, stores

``embed_images`` writes one embedding store (``kind="embeddings"``) directly in OUT.
Both resume an interrupted run from the last complete shard of every store, validate every
option before anything is written, and hold an exclusive lock on OUT while they write (a
second run on the same OUT is refused, naming the first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsae.core import dist
from vlmsae.core.cpu import default_workers
from vlmsae.core.io import read_json, remove_stale_temps
from vlmsae.core.lock import output_lock
from vlmsae.data.images import ImageDataset
from vlmsae.data.merge import check_rank_parts, rank_part_dir
from vlmsae.data.sources import open_source
from vlmsae.data.store import MANIFEST, StoreError, StoreWriter
from vlmsae.encoders.adapters import Encoder
from vlmsae.encoders.cache_loop import CacheResult, Target, run_cache
from vlmsae.encoders.plan import Plan, check_token_count, sae_plan
from vlmsae.encoders.tokens import HOOKPOINTS, TokenSelection

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)
_CHECKED_META = (
    "model", "hookpoint", "layer", "tokens", "split", "dataset_size", "image_range", "data_source"
)  # fmt: skip


@dataclass(frozen=True)
class CacheConfig:
    """What to cache and how (shared by the library, the CLI and the manifests)."""

    layers: tuple[int, ...] = ()
    """Blocks for ``post_mlp_residual`` (negative counts from the end)."""
    hookpoints: tuple[str, ...] = ("post_mlp_residual",)
    """Hook points: ``post_mlp_residual | post_projection`` (both: comma-separated)."""
    tokens: str = "cls"
    """Token selection at block outputs: ``cls | mean | all | random:N`` (N tokens per image)."""
    dtype: str = "float16"
    """On-disk dtype: ``float16`` or ``float32``."""
    batch_size: int = 64
    """Images per forward pass."""
    workers: int = field(default_factory=default_workers)
    """DataLoader worker processes that decode and preprocess images (0 = in process;
    default: the CPUs available, at most 8)."""
    shard_rows: int = 1 << 16
    """Rows per shard (a shard closes at the first batch boundary past this)."""
    seed: int = 0
    """Seed of the ``random:N`` token draw (per image: ``(seed, image index)``)."""
    resume: bool = False
    """Continue interrupted stores in the output directory."""
    progress: bool = True
    """Show a progress bar with images/s."""

    def __post_init__(self) -> None:
        unknown = [h for h in self.hookpoints if h not in HOOKPOINTS]
        if unknown or not self.hookpoints:
            raise ValueError(f"unknown hook point(s) {unknown}; choose from {HOOKPOINTS}")
        if "post_mlp_residual" in self.hookpoints and not self.layers:
            raise ValueError("post_mlp_residual needs at least one layer (--layer 11,23)")
        if self.layers and "post_mlp_residual" not in self.hookpoints:
            raise ValueError("layers were given but post_mlp_residual is not a chosen hook point")
        TokenSelection.parse(self.tokens)
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.batch_size < 1 or self.workers < 0 or self.shard_rows < 1:
            raise ValueError("batch_size and shard_rows must be >= 1 and workers >= 0")


def _open_targets(out: Path, plans: list[Plan], cfg: CacheConfig) -> list[Target]:
    """Open a writer per plan (call while holding the lock on ``out``)."""
    if dist.is_main():
        remove_stale_temps(out)
    return [
        Target(p.name, p.key, _open_writer(out / p.name, p.d, p.kind, p.meta, cfg), p.sae)
        for p in plans
    ]


def _open_writer(
    path: Path, d: int, kind: str, meta: dict[str, Any], cfg: CacheConfig
) -> StoreWriter:
    if dist.is_distributed():  # this rank writes its share as a part of the store
        if (path / MANIFEST).exists() and not cfg.resume:
            raise FileExistsError(
                f"{path} already holds a store; choose another --out or delete it"
            )
        if cfg.resume:
            check_rank_parts(path, dist.world_size())
        part = dist.shard(int(meta["dataset_size"]))
        path, meta = (
            rank_part_dir(path, dist.rank()),
            {**meta, "image_range": [part.start, part.stop]},
        )
    manifest_path = path / MANIFEST
    old = read_json(manifest_path) if manifest_path.exists() else {}
    if cfg.resume and old.get("shards"):  # a store without a shard is simply replaced
        for key in _CHECKED_META:
            if key in meta and old.get(key) != meta[key]:
                raise StoreError(
                    f"cannot resume {path}: its {key} is {old.get(key)!r}, this run has "
                    f"{meta[key]!r}; use another --out or the original options"
                )
    return StoreWriter(
        path,
        d,
        kind=kind,
        dtype=cfg.dtype,
        shard_rows=cfg.shard_rows,
        meta=meta,
        resume=cfg.resume,
    )


def _as_encoder(encoder: Encoder | str | Path, device: str | None) -> Encoder:
    if isinstance(encoder, Encoder):
        return encoder.to(device) if device else encoder
    return Encoder.from_pretrained(encoder, device=device or "cpu")


def _as_dataset(dataset: ImageDataset | str | Path, split: str | None) -> ImageDataset:
    return dataset if isinstance(dataset, ImageDataset) else open_source(dataset, split)


def _base_meta(encoder: Encoder, data: ImageDataset) -> dict[str, Any]:
    return {
        "model": encoder.name,
        "revision": encoder.revision,
        "model_family": encoder.family,
        "n_layers": encoder.n_layers,
        "dataset_root": data.root,
        "split": data.split,
        "dataset_layout": data.layout,
        "dataset_size": len(data),
        # entries of the folder that are not images of the dataset (dangling / looping links)
        "unlisted": [{"path": p, "reason": r} for p, r in data.skipped],
        # a Hugging Face / Parquet / WebDataset source: name, revision or fingerprint, files
        **({"data_source": dict(data.source)} if data.source else {}),
    }


def cache_activations(
    encoder: Encoder | str | Path,
    dataset: ImageDataset | str | Path,
    out_dir: str | Path,
    cfg: CacheConfig,
    *,
    split: str | None = None,
    sae: SAE | str | Path | None = None,
    sae_hookpoint: int | str | None = None,
    device: str | None = None,
    allow_mismatch: bool = False,
) -> CacheResult:
    """Cache the hook points of ``cfg`` for every image of ``dataset`` under ``out_dir``.

    Args:
        encoder: an :class:`Encoder`, or a hub id / local folder to load one from.
        dataset: an :class:`~vlmsae.data.images.ImageDataset`, or a ``--data`` source
            (:func:`vlmsae.data.sources.open_source`: a folder, ``hf:ORG/NAME``, Parquet,
            WebDataset shards).
        out_dir: output directory (layout in the module docstring).
        cfg: what to cache.
        split: split (folder) when ``dataset`` is not listed yet.
        sae: an SAE (``encode``/``decode``) or an SAE checkpoint directory; its codes at
            ``sae_hookpoint`` are stored too.
        sae_hookpoint: block index or ``"post_projection"``; defaults to the SAE's own
            ``hookpoint``/``layer`` metadata, else the only hook point cached.
        device: move the model there (``cpu``, ``cuda``, ``cuda:1``).
        allow_mismatch: apply the SAE even where its recorded source (model, hook point,
            layer, tokens) differs from what it is applied to (a warning instead of an error).

    Everything is validated before anything is written to ``out_dir``.
    """
    enc = _as_encoder(encoder, device)
    data = _as_dataset(dataset, split)
    selection = TokenSelection.parse(cfg.tokens, cfg.seed)
    enc.check_tokens(selection)
    out = Path(out_dir)
    base = _base_meta(enc, data)
    plans: list[Plan] = []
    layers = list(dict.fromkeys(enc.layer_index(x) for x in cfg.layers))
    if layers and selection.kind == "random":
        check_token_count(enc, selection, min(layers))
    for layer in layers:
        meta = {**base, "hookpoint": "post_mlp_residual", "layer": layer, "tokens": str(selection)}
        plans.append(Plan(f"layer_{layer}", layer, enc.d_model, "activations", meta))
    if "post_projection" in cfg.hookpoints:
        meta = {**base, "hookpoint": "post_projection", "tokens": "pooled"}
        plans.append(Plan("post_projection", "post_projection", enc.d_embed, "activations", meta))
    if sae is not None:
        plans.append(sae_plan(enc, sae, sae_hookpoint, plans, allow_mismatch))
    dist.init_from_env()  # under torchrun: each rank caches a share of the images
    with dist.on_main(lambda: output_lock(out, "vlmsae cache"), f"locking {out}"):
        targets = _open_targets(out, plans, cfg)
        return run_cache(enc, data, targets, selection, cfg, out / "summary.json")


def embed_images(
    encoder: Encoder | str | Path,
    dataset: ImageDataset | str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    dtype: str = "float32",
    batch_size: int = 64,
    workers: int | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> CacheResult:
    """Write an embedding store (``post_projection``, one row per image) in ``out_dir``:
    the image embeddings the Monosemanticity Score compares (the paper used DINOv2)."""
    cfg = CacheConfig(
        hookpoints=("post_projection",),
        dtype=dtype,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        resume=resume,
        progress=progress,
    )
    enc = _as_encoder(encoder, device)
    data = _as_dataset(dataset, split)
    meta = {**_base_meta(enc, data), "hookpoint": "post_projection", "tokens": "pooled"}
    out = Path(out_dir)
    dist.init_from_env()
    with dist.on_main(lambda: output_lock(out, "vlmsae embed"), f"locking {out}"):
        writer = _open_writer(out, enc.d_embed, "embeddings", meta, cfg)
        target = Target("embeddings", "post_projection", writer)
        selection = TokenSelection.parse("cls")
        return run_cache(enc, data, [target], selection, cfg, out / "summary.json")
