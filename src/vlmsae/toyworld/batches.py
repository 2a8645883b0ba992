"""Tensors of the toy world for training: pixels, attribute labels, caption ids."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vlmsae.toyworld.world import ATTRIBUTES, BACKGROUNDS, COLORS, SHAPES, SIZES, ToyImage, render

MODEL_IMAGE_SIZE = 32
"""Side of the images the toy models see: their image processor resizes the 64x64 world
images to 32x32 (as hub CLIPs resize photos to 224 or 336), so a patch-8 ViT has 16
patches and the models train in minutes on a CPU."""


class WorldBatch(NamedTuple):
    """A rendered sample of the world, ready for training."""

    pixel_values_NCHW: Any
    """float32 tensor ``[N, 3, 32, 32]``: the images through the models' image processor."""
    labels_NA: np.ndarray
    """int64 index of each attribute value (columns in ``ATTRIBUTES`` order) ``[N, A]``."""
    caption_ids_N: np.ndarray
    """int64 index of each image's caption in ``captions`` ``[N]``."""
    records: list
    captions: list[str]
    """The captions the ids index: :func:`all_captions` for shapes, else the distinct
    captions of ``records`` in order of first appearance."""
    world: str = "shapes"


def all_captions() -> list[str]:
    """Every caption of the world (one per shape x colour x size x background)."""
    return [
        f"a {z} {c} {s} on a {b} background"
        for s in SHAPES
        for c in COLORS
        for z in SIZES
        for b in BACKGROUNDS
    ]


CONCEPT_TEMPLATES: dict[str, str] = {
    "shape": "a {}",
    "color": "a {} object",
    "size": "a {} object",
    "background": "a {} background",
}
"""Short texts naming one concept value: extra captions in CLIP training, and the class
prompts of zero-shot classification."""


def concept_prompts() -> dict[str, list[str]]:
    """Attribute -> one prompt per value (in ``ATTRIBUTES`` order)."""
    return {a: [t.format(v) for v in ATTRIBUTES[a]] for a, t in CONCEPT_TEMPLATES.items()}


def caption_index(r: ToyImage) -> int:
    """Position of ``r.caption`` in :func:`all_captions`."""
    s, c = SHAPES.index(r.shape), tuple(COLORS).index(r.color)
    z, b = tuple(SIZES).index(r.size), BACKGROUNDS.index(r.background)
    return ((s * len(COLORS) + c) * len(SIZES) + z) * len(BACKGROUNDS) + b


def labels(r: ToyImage) -> list[int]:
    return [values.index(getattr(r, name)) for name, values in ATTRIBUTES.items()]


def make_batch(records: list, seed: int = 0, world: str = "shapes") -> WorldBatch:
    """Render ``records`` of ``world`` and collect their labels."""
    if world == "shapes":
        return WorldBatch(
            pixel_values_NCHW=pixel_values([render(r, seed) for r in records]),
            labels_NA=np.array([labels(r) for r in records], np.int64).reshape(len(records), -1),
            caption_ids_N=np.array([caption_index(r) for r in records], np.int64),
            records=records,
            captions=all_captions(),
        )
    from vlmsae.toyworld.worlds import get_world

    w = get_world(world)
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
        world=world,
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
