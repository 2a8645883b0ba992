"""Image grids of neurons' highest-activating images, like the paper's figures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)


def _tile(path: str | Path, size: int) -> Image.Image:
    """The image at ``path`` as an RGB square tile; a grey tile when it cannot be read."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            return im.resize((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as e:
        log.warning("grid: cannot read %s (%s); drawing a blank tile", path, e)
        return Image.new("RGB", (size, size), (200, 200, 200))


def neuron_grid(
    image_paths: Sequence[Sequence[str | Path]],
    labels: Sequence[str],
    *,
    tile: int = 64,
    per_row: int = 16,
    pad: int = 2,
    label_width: int = 150,
) -> Image.Image:
    """One row per neuron: its label (e.g. ``neuron 12  MS 0.91``) then its top images.

    Args:
        image_paths: per neuron, its top image paths, best first.
        labels: per neuron, the text drawn left of its row.
        tile: side of each image tile in pixels.
        per_row: image slots per row (missing images leave the slot empty).
    """
    if len(image_paths) != len(labels):
        raise ValueError(f"{len(image_paths)} rows of images but {len(labels)} labels")
    width = label_width + per_row * (tile + pad) + pad
    height = max(1, len(labels)) * (tile + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (paths, label) in enumerate(zip(image_paths, labels)):
        y = pad + r * (tile + pad)
        draw.text((pad, y + tile // 2 - 6), label, fill="black", font=font)
        for c, path in enumerate(list(paths)[:per_row]):
            canvas.paste(_tile(path, tile), (label_width + pad + c * (tile + pad), y))
    return canvas
