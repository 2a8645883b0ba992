"""The compatibility checks of ``vlmsae.provenance`` on plain provenance dicts."""

from __future__ import annotations

import logging

import pytest

from vlmsae.errors import UserError
from vlmsae.provenance import (
    check_same_images,
    check_same_source,
    image_fingerprint,
    source_differences,
)

SAE = {"model": "m", "hookpoint": "post_mlp_residual", "layer": 22, "tokens": "cls", "d_in": 8}


def test_source_differences_normalise_what_means_the_same(tmp_path):
    (tmp_path / "model").mkdir()
    a = {"model": str(tmp_path / "model"), "layer": -2, "tokens": "random:64"}
    b = {"model": f"{tmp_path}/./model/", "layer": 22, "tokens": "all", "n_layers": 24}
    assert source_differences(a, b) == []
    assert source_differences(a, {**b, "tokens": "cls"}) == ["tokens random:64 vs cls"]
    assert source_differences({"revision": "v1"}, {"revision": None}) == []  # unknown: skipped


def test_check_same_source_refuses_or_warns(caplog):
    store = {**SAE, "layer": 2, "d": 8}
    with pytest.raises(UserError, match="layer 22 vs 2.*--allow-mismatch"):
        check_same_source(SAE, store, "SAE", "store", allow_mismatch=False)
    with caplog.at_level(logging.WARNING):
        check_same_source(SAE, store, "SAE", "store", allow_mismatch=True)
    assert "layer 22 vs 2" in caplog.text
    with pytest.raises(UserError, match="8-wide.*width 5"):  # never allowed
        check_same_source(SAE, {**SAE, "d": 5}, "SAE", "store", allow_mismatch=True)


def test_check_same_images_without_fingerprints_still_compares_split(caplog):
    a, b = {"split": "train", "n_images": 10}, {"split": "test", "n_images": 10}
    with pytest.raises(UserError, match="10 images split train.*10 images split test"):
        check_same_images(a, b, "A", "B")
    assert "no image fingerprint" in caplog.text
    check_same_images(a, {"n_images": 10}, "A", "B")  # nothing contradicts: a warning only
    f = image_fingerprint(["x.png", "y.png"])
    check_same_images(f, dict(f), "A", "B")
    with pytest.raises(UserError, match="do not hold the same images"):
        check_same_images(f, image_fingerprint(["y.png", "x.png"]), "A", "B")
