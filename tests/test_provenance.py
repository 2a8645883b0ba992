"""The compatibility checks of ``vlmsae.data.provenance`` on plain provenance dicts."""

from __future__ import annotations

import logging

import pytest

from vlmsae.core.errors import UserError
from vlmsae.data.provenance import (
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


def test_every_training_checkpoint_records_its_store(tmp_path):
    """The SAE's config.json names its training data from the first checkpoint on (library
    and CLI alike), so an interrupted run's SAE is checked like a finished one's."""
    import numpy as np

    import vlmsae
    from test_sae_train import Interrupt, interrupt_at
    from vlmsae.data.store import ActivationStore
    from vlmsae.sae.checkpoint import sae_provenance

    images = [str(tmp_path / f"img{i}.png") for i in range(64)]
    meta = {"model": "m", "hookpoint": "post_mlp_residual", "layer": 3, "tokens": "cls"}
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    store = ActivationStore.write(tmp_path / "acts", x, meta, images=images)
    cfg = vlmsae.TrainConfig(
        sae=vlmsae.SAEConfig(d_in=8, d_sae=16, sparsity="topk", k=2),
        steps=4,
        batch_size=16,
        checkpoint_every=2,
        progress=False,
    )
    with pytest.raises(Interrupt):  # stopped after the checkpoint of step 2
        vlmsae.train_sae(store, cfg, out_dir=tmp_path / "run", on_step=interrupt_at(3))
    prov = sae_provenance(tmp_path / "run")
    assert prov["layer"] == 3 and prov["images_sha256"] == store.manifest["images_sha256"]
