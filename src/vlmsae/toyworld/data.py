"""Tensors of the toy world for training: pixels, attribute labels, caption ids."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vlmsae.toyworld.world import ATTRIBUTES, BACKGROUNDS, COLORS, SHAPES, SIZES, ToyImage, render

# The OpenAI CLIP normalisation that CLIPImageProcessor applies (tests check the match).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


class WorldBatch(NamedTuple):
    """A rendered sample of the world, ready for training."""

    pixels_NHWC: np.ndarray
    """uint8 images ``[N, 64, 64, 3]``."""
    labels_NA: np.ndarray
    """int64 index of each attribute value (columns in ``ATTRIBUTES`` order) ``[N, A]``."""
    caption_ids_N: np.ndarray
    """int64 index of each image's caption in :func:`all_captions` ``[N]``."""
    records: list[ToyImage]


def all_captions() -> list[str]:
    """Every caption of the world (one per shape x colour x size x background)."""
    return [
        f"a {z} {c} {s} on a {b} background"
        for s in SHAPES
        for c in COLORS
        for z in SIZES
        for b in BACKGROUNDS
    ]


def caption_index(r: ToyImage) -> int:
    """Position of ``r.caption`` in :func:`all_captions`."""
    s, c = SHAPES.index(r.shape), tuple(COLORS).index(r.color)
    z, b = tuple(SIZES).index(r.size), BACKGROUNDS.index(r.background)
    return ((s * len(COLORS) + c) * len(SIZES) + z) * len(BACKGROUNDS) + b


def labels(r: ToyImage) -> list[int]:
    return [values.index(getattr(r, name)) for name, values in ATTRIBUTES.items()]


def make_batch(records: list[ToyImage], seed: int = 0) -> WorldBatch:
    """Render ``records`` and collect their labels."""
    pixels = np.stack([np.asarray(render(r, seed)) for r in records])
    return WorldBatch(
        pixels_NHWC=pixels,
        labels_NA=np.array([labels(r) for r in records], np.int64).reshape(len(records), -1),
        caption_ids_N=np.array([caption_index(r) for r in records], np.int64),
        records=records,
    )


def normalize_pixels(pixels_NHWC: np.ndarray):  # -> torch.Tensor [N, 3, H, W]
    """uint8 images -> the float tensor ``CLIPImageProcessor`` makes of them."""
    import torch

    x = (pixels_NHWC.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
