"""Decode one image, from a file or from bytes, under a pixel budget; never raise on bad input.

Decoding refuses an image above a pixel budget (:data:`MAX_PIXELS`, or
``VLMSAE_MAX_IMAGE_PIXELS``) from its header, before a pixel is decoded: a 17 KB PNG can
declare 12000 x 12000 pixels and take gigabytes once decoded (a decompression bomb). The same
rules hold for a file of a folder, a member of a ``.tar`` shard and a cell of an Arrow table.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from vlmsae.core.errors import UserError

MAX_PIXELS = 64 * 2**20
"""Default pixel budget per image (64 megapixels: above every camera photo in the datasets the
paper uses, far below a decompression bomb); ``VLMSAE_MAX_IMAGE_PIXELS`` overrides it."""
MAX_PIXELS_ENV = "VLMSAE_MAX_IMAGE_PIXELS"


class Decoded(NamedTuple):
    """One image read: an RGB image, or None with the reason it was skipped."""

    image: Image.Image | None
    error: str | None


def max_pixels() -> int:
    """The pixel budget per image: ``VLMSAE_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_PIXELS
    try:
        budget = int(float(value))
    except ValueError:
        raise UserError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels") from None
    if budget <= 0:
        raise UserError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {value}")
    return budget


def open_rgb(
    source: str | Path | bytes | bytearray | memoryview, budget: int | None = None
) -> Decoded:
    """Read an image (a file path, or the encoded bytes of one) as 8-bit RGB; never raises on
    bad input (returns the reason).

    Converts greyscale, 16-bit, palette, CMYK and alpha images (alpha is composited on
    white) and applies the EXIF orientation. Zero-byte, truncated and unreadable images,
    and images above ``budget`` pixels (default :func:`max_pixels`; checked from the header,
    before decoding), come back as ``Decoded(None, reason)``.
    """
    budget = max_pixels() if budget is None else budget
    opened: str | Path | io.BytesIO | None = None
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                return Decoded(None, "empty image (0 bytes)")
            opened = io.BytesIO(source)
        elif Path(source).stat().st_size == 0:
            return Decoded(None, "empty file (0 bytes)")
        else:
            opened = source
        with warnings.catch_warnings():  # PIL's own bomb warning: the budget below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(opened)
        with im:
            width, height = im.size
            if width * height > budget:
                return Decoded(
                    None,
                    f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is above "
                    f"the pixel budget of {budget / 1e6:.0f} megapixels (a decompression bomb "
                    f"or a huge image; set {MAX_PIXELS_ENV} to raise it)",
                )
            im.load()  # decode now: a truncated file raises here, not later
            return Decoded(to_rgb(im), None)
    except Exception as e:  # noqa: BLE001 - untrusted bytes: PIL plugins raise many types
        # (OSError, SyntaxError, struct.error, IndexError, DecompressionBombError, ...); a
        # long run must record the image and go on, never die on it
        # (bytes: PIL names the buffer object, whose address would differ from run to run)
        message = str(e)
        if isinstance(opened, io.BytesIO):
            message = message.replace(f" {opened!r}", "")
        return Decoded(None, f"{type(e).__name__}: {message}")


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im`` with the EXIF orientation applied."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: rescale
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


class FileReader:
    """Image files by path (a folder source)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> Decoded:
        return open_rgb(self.paths[i])
