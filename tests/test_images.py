"""Image datasets: folder layouts, deterministic order, subsampling, robust decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from image_files import BAD, GOOD, make_mixed_folder, write_bad, write_good
from vlmsae.core.errors import UserError
from vlmsae.data.images import detect_layout, load_dataset, open_rgb


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    write_good(folder)
    write_bad(folder)
    return folder


@pytest.mark.parametrize("name", GOOD)
def test_awkward_images_become_rgb(files, name):
    decoded = open_rgb(files / name)
    assert decoded.error is None
    assert decoded.image.mode == "RGB"
    want_size = (24, 36) if name == "exif.jpg" else (36, 24)  # EXIF orientation 6 rotates
    assert decoded.image.size == want_size


def test_conversions_keep_content(files):
    grey = np.asarray(open_rgb(files / "grey.png").image)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    raw16 = np.asarray(Image.open(files / "grey16.png"), dtype=np.float64)
    got16 = np.asarray(open_rgb(files / "grey16.png").image)[..., 0].astype(np.float64)
    assert np.abs(got16 - raw16 / 65535 * 255).max() <= 1.0, "16-bit rescaled, not clipped"
    rgba = np.asarray(Image.open(files / "rgba.png")).astype(np.float64)
    got = np.asarray(open_rgb(files / "rgba.png").image).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    want = rgba[..., :3] * alpha + 255 * (1 - alpha)  # composited on white
    assert np.abs(got - want).max() <= 1.5


@pytest.mark.parametrize("name", BAD)
def test_bad_files_give_reasons(files, name):
    decoded = open_rgb(files / name)
    assert decoded.image is None and decoded.error
    if name == "empty.jpg":
        assert "0 bytes" in decoded.error
    if name == "bomb.png":
        assert "12000x12000 pixels (144 megapixels) is above the pixel budget" in decoded.error


def test_the_pixel_budget_is_checked_before_decoding(files, monkeypatch):
    def no_decoding(self):
        raise AssertionError(f"{self.size} decoded despite the pixel budget")

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "load", no_decoding)
        assert "pixel budget" in open_rgb(files / "bomb.png").error
    assert (files / "bomb.png").stat().st_size < 100_000  # tiny on disk, huge decoded
    assert open_rgb(files / "rgb.jpg", budget=24 * 36).image is not None  # exactly at it
    assert "pixel budget" in open_rgb(files / "rgb.jpg", budget=24 * 36 - 1).error
    monkeypatch.setenv("VLMSAE_MAX_IMAGE_PIXELS", str(24 * 36 - 1))  # the budget is settable
    assert "set VLMSAE_MAX_IMAGE_PIXELS to raise it" in open_rgb(files / "rgb.jpg").error
    monkeypatch.setenv("VLMSAE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(UserError, match="VLMSAE_MAX_IMAGE_PIXELS='lots' is not a number"):
        open_rgb(files / "rgb.jpg")


def test_layouts(tmp_path):
    inat = tmp_path / "inat" / "train"
    for cls in (
        "00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
        "00000_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
    ):
        write_good(inat / cls)
    data = load_dataset(tmp_path / "inat", "train")
    assert data.layout == "inat21" and data.split == "train"
    assert data.classes[0].startswith("00000_Plantae")  # sorted by name
    assert data.taxonomy[1][-1] == "Corvus corax" and data.taxonomy[1][2] == "Aves"
    assert data.labels == tuple(sorted(data.labels))

    imagenet = tmp_path / "imagenet" / "val"
    write_good(imagenet / "n01440764")
    write_good(imagenet / "n01443537")
    assert load_dataset(tmp_path / "imagenet", "val").layout == "imagenet"

    flat = tmp_path / "flat"
    write_good(flat)
    data = load_dataset(flat)
    assert data.layout == "flat" and set(data.labels) == {-1}
    assert [Path(p).name for p in data.paths] == sorted(GOOD)

    mixed = make_mixed_folder(tmp_path / "mixed")
    assert detect_layout(mixed) == "imagefolder"
    data = load_dataset(mixed)
    assert data.classes == ("a", "b") and len(data) == 2 * len(GOOD) + len(BAD)
    with pytest.raises(FileNotFoundError, match="no split folder"):
        load_dataset(mixed, "train")


def test_cub_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    for cls in ("001.Black_footed_Albatross", "002.Laysan_Albatross"):
        write_good(root / "images" / cls)
    rel = sorted(str(p.relative_to(root / "images")) for p in (root / "images").rglob("*.*"))
    (root / "images.txt").write_text("".join(f"{i + 1} {r}\n" for i, r in enumerate(rel)))
    (root / "train_test_split.txt").write_text(
        "".join(f"{i + 1} {int(i % 3 != 0)}\n" for i in range(len(rel)))
    )
    train, test = load_dataset(root, "train"), load_dataset(root, "test")
    assert train.layout == test.layout == "cub"
    assert len(train) + len(test) == len(rel) and not set(train.paths) & set(test.paths)
    assert train.classes == ("001.Black_footed_Albatross", "002.Laysan_Albatross")


@settings(max_examples=25, deadline=None)
@given(every=st.integers(1, 5), limit=st.one_of(st.none(), st.integers(0, 30)))
def test_every_and_limit(tmp_path_factory, every, limit):
    root = _numbered_folder(tmp_path_factory)
    full = load_dataset(root)
    sub = load_dataset(root, every=every, limit=limit) if limit != 0 else None
    if limit == 0:
        with pytest.raises(ValueError, match="no images"):
            load_dataset(root, every=every, limit=0)
        return
    want = full.paths[::every][:limit]
    assert sub.paths == want and load_dataset(root, every=every, limit=limit) == sub


_NUMBERED: dict[str, Path] = {}


def _numbered_folder(factory) -> Path:
    if "root" not in _NUMBERED:
        root = factory.mktemp("numbered")
        for c in range(3):
            (root / f"class{c}").mkdir()
            for i in range(7):
                Image.new("RGB", (4, 4)).save(root / f"class{c}" / f"{i:03d}.png")
        _NUMBERED["root"] = root
    return _NUMBERED["root"]
