"""Tensors of a toy world for training: pixels, attribute labels, caption ids; and the
toy models' image processor."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vlmsae.toyworld.worlds import DEFAULT_WORLD, World, get_world

MODEL_IMAGE_SIZE = 32
"""Side of the images the toy models see: their image processor resizes the 64x64 world
images to 32x32 (as hub CLIPs resize photos to 224 or 336), so a patch-8 ViT has 16
patches and the models train in minutes on a CPU."""


class WorldBatch(NamedTuple):
    """A rendered sample of the world, ready for training."""

    pixel_values_NCHW: Any
    """float32 tensor ``[N, 3, 32, 32]``: the images through the models' image processor."""
    labels_NA: np.ndarray
    """int64 index of each attribute value (columns in ``world.attributes`` order) ``[N, A]``."""
    caption_ids_N: np.ndarray
    """int64 index of each image's caption in ``captions`` ``[N]``."""
    records: list
    captions: list[str]
    """The captions the ids index: ``world.all_captions()`` where the world lists them
    (shapes), else the distinct captions of ``records`` in order of first appearance."""
    world: str = DEFAULT_WORLD
    """Name of the world the records are from."""


def make_batch(records: list, seed: int = 0, world: str | World | None = None) -> WorldBatch:
    """Render ``records`` of ``world`` (default: the default world) and collect their labels."""
    w = get_world(world)
    captions = w.all_captions()
    if captions is None:  # the distinct captions of the records, in order
        captions = list(dict.fromkeys(r.caption for r in records))
    position = {c: i for i, c in enumerate(captions)}
    values = w.attributes
    labels_NA = [[values[a].index(getattr(r, a)) for a in values] for r in records]
    return WorldBatch(
        pixel_values_NCHW=pixel_values([w.render(r, seed) for r in records]),
        labels_NA=np.array(labels_NA, np.int64).reshape(len(records), -1),
        caption_ids_N=np.array([position[r.caption] for r in records], np.int64),
        records=records,
        captions=captions,
        world=w.name,
    )


def make_image_processor() -> Any:
    """The toy models' image processor: PIL backend (no torchvision), resize to 32x32."""
    from transformers import CLIPImageProcessorPil

    side = MODEL_IMAGE_SIZE
    return CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )


def pixel_values(images: list[Image.Image], chunk: int = 1024) -> Any:
    """``pixel_values`` of PIL images, exactly as the shipped processors compute them."""
    import torch

    processor = make_image_processor()
    parts = [
        processor(images=images[lo : lo + chunk], return_tensors="pt")["pixel_values"]
        for lo in range(0, len(images), chunk)
    ]
    return torch.cat(parts)
