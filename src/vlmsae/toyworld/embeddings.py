"""Embedding stores of the toy world: the ground-truth oracle and the toy CLIP.

The Monosemanticity Score compares the images a neuron fires on through an embedding
model. In the toy world that embedding can be the truth itself: the **oracle
embedding** of an image is the concatenation of one-hot vectors of its categorical
concepts (family, shape, colour, size, background), each block scaled to unit norm, so
that the cosine similarity of two images is the fraction of concepts they share. The
**toy CLIP** image embedding (``image_embeds``, the ``post_projection`` hook point) is the
learned alternative, as CLIP is the paper's alternative to DINOv2.

Both are written as ordinary embedding stores (``kind="embeddings"``, one row per
image, ``images.jsonl`` listing the exported image paths, absolute, in dataset order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmsae.data.store import ActivationStore, StoreWriter
from vlmsae.toyworld.export import ExportedImage, read_exported
from vlmsae.toyworld.worlds import World, clip_path, get_world, world_of_split

log = logging.getLogger(__name__)

ORACLE_MODEL = "vlmsae/toyworld-oracle"
"""``model`` field of an oracle embedding store's manifest."""


def oracle_dims(world: str | World | None = None) -> list[str]:
    """Names of the oracle embedding's coordinates, ``attribute=value``."""
    w = get_world(world)
    return [f"{name}={v}" for name in w.oracle_attributes for v in w.attributes[name]]


def oracle_embedding(records: Sequence, world: str | World | None = None) -> np.ndarray:
    """Unit-norm ground-truth embeddings ``[N, E]`` (E = every concept value).

    One block per attribute (shapes: family, shape, colour, size, background; emoji:
    group, subgroup, emoji, background and how many emoji the image shows, a factor the
    models see), each of weight ``1/sqrt(A)``: one-hot, or, where
    an image shows two emoji, spread evenly over the values present (unit norm). The
    cosine similarity of two images is then the mean over attributes of what they share
    (in the shapes world, exactly the fraction of attributes they share).
    """
    w = get_world(world)
    emb_NE = np.zeros((len(records), len(oracle_dims(w))), np.float32)
    weight = 1.0 / np.sqrt(len(w.oracle_attributes))
    for i, r in enumerate(records):
        concepts, offset = w.concepts(r), 0
        for name in w.oracle_attributes:
            values = w.attributes[name]
            present = concepts[name]
            for v in present:
                emb_NE[i, offset + values.index(v)] = weight / np.sqrt(len(present))
            offset += len(values)
    return emb_NE


def _exported(source: str | Path | Sequence[ExportedImage]) -> list[ExportedImage]:
    return read_exported(source) if isinstance(source, (str, Path)) else list(source)


def _write_store(
    emb_NE: np.ndarray, images: list[ExportedImage], out_dir: str | Path, meta: dict
) -> ActivationStore:
    writer = StoreWriter(out_dir, emb_NE.shape[1], kind="embeddings", dtype="float32", meta=meta)
    writer.add(emb_NE, np.arange(len(emb_NE)))
    writer.mark(len(emb_NE))
    paths = [os.path.abspath(im.path) for im in images]  # readable from any directory
    return writer.close(images=paths, n_images=len(images))


def write_oracle_embeddings(
    source: str | Path | Sequence[ExportedImage], out_dir: str | Path
) -> ActivationStore:
    """Write the oracle embedding of an exported split folder as an embedding store.

    Args:
        source: a folder written by :func:`~vlmsae.toyworld.export.export_imagefolder`
            (``out/split``), or the list :func:`~vlmsae.toyworld.export.read_exported`
            returns.
        out_dir: the store directory (must not hold a store yet).
    """
    images = _exported(source)
    if not images:
        raise ValueError("no images to embed")
    world = world_of_split(images[0].path.parent.parent)
    meta = {
        "model": ORACLE_MODEL,
        "revision": "ground-truth",
        "hookpoint": "post_projection",
        "dataset_root": os.path.abspath(images[0].path.parent.parent),
        "split": images[0].record.split,
        "dims": oracle_dims(world),
        "world": world.name,
    }
    emb_NE = oracle_embedding([im.record for im in images], world)
    store = _write_store(emb_NE, images, out_dir, meta)
    log.info("wrote the oracle embedding of %d images to %s", len(images), out_dir)
    return store


def write_clip_embeddings(
    folder: str | Path,
    out_dir: str | Path,
    model_path: str | Path | None = None,
    batch_size: int = 256,
) -> ActivationStore:
    """Write the toy CLIP's image embeddings (``post_projection``) of an exported folder.

    This is :func:`vlmsae.encoders.cache.embed_images` with the toy CLIP: the images are
    read back from disk and preprocessed by the model's own processor, exactly as a hub
    model's would be, and rows follow ``attributes.csv``. MS normalises embeddings itself,
    so they are stored as the model returns them.
    """
    from vlmsae.encoders.cache import embed_images

    model = Path(model_path) if model_path is not None else clip_path()
    embed_images(model, folder, out_dir, batch_size=batch_size, workers=0, progress=False)
    return ActivationStore(out_dir)
