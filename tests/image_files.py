"""Write image files of every awkward kind, for dataset and caching tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GOOD = ("rgb.jpg", "grey.png", "rgba.png", "cmyk.jpg", "palette.gif", "grey16.png", "exif.jpg")
BAD = ("empty.jpg", "truncated.jpg", "not_an_image.png", "bomb.png")


def _rgb(seed: int, size: tuple[int, int] = (24, 36)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_good(folder: Path, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed)).save(folder / "rgb.jpg")
    Image.fromarray(_rgb(seed + 1)[..., 0]).save(folder / "grey.png")
    rgba = np.dstack([_rgb(seed + 2), np.full((24, 36), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(_rgb(seed + 3)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(_rgb(seed + 4)).convert("P").save(folder / "palette.gif")
    grey16 = (np.random.default_rng(seed + 5).integers(0, 65536, (24, 36))).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    Image.fromarray(_rgb(seed + 6)).save(folder / "exif.jpg", exif=exif)


def write_bad(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    buf = folder / "full.tmp"
    Image.fromarray(_rgb(9, (64, 64))).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.read_bytes()[:300])
    buf.unlink()
    (folder / "not_an_image.png").write_text("hello, I am text")
    write_bomb(folder / "bomb.png")


def write_bomb(path: Path, side: int = 12_000) -> None:
    """A decompression bomb: a ~17 KB 1-bit PNG that declares side x side pixels (144
    megapixels at 12,000: gigabytes once decoded to RGB)."""
    Image.new("1", (side, side)).save(path, optimize=True)


def make_mixed_folder(root: Path) -> Path:
    """An ImageFolder with two classes: class ``a`` holds good files, ``b`` good and bad."""
    write_good(root / "a", seed=0)
    write_good(root / "b", seed=10)
    write_bad(root / "b")
    return root
