"""Damaged artifacts are refused with a message, never turned into plausible numbers:
non-finite SAE weights, codes and embeddings, broken config files, and stores that must
not depend on the working directory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from tiny_models import clip_processor, make_clip, random_images
from vlmsae import SAE, SAEConfig
from vlmsae.core.errors import UserError
from vlmsae.data.images import load_dataset
from vlmsae.data.store import ActivationStore, StoreWriter
from vlmsae.encoders import Encoder
from vlmsae.encoders.cache import CacheConfig, cache_activations
from vlmsae.formats.dictionary_learning import ConvertError, convert_dictionary_learning
from vlmsae.metrics.ms import monosemanticity
from vlmsae.sae.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from vlmsae.sae.model import load_sae


def _saved_sae(tmp_path):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32, sparsity="topk", k=4))
    return sae.save(tmp_path / "sae")


@pytest.mark.parametrize(
    "tensor, index, value, found",
    [
        ("W_dec", (3, 1), float("nan"), "W_dec: 1 NaN"),
        ("b_enc", (5,), float("inf"), "b_enc: 1 Inf"),
    ],
)
def test_non_finite_sae_weights_are_refused(tmp_path, tensor, index, value, found):
    path = _saved_sae(tmp_path)
    tensors = load_file(path / WEIGHTS_FILE)
    tensors[tensor][index] = value
    save_file(tensors, path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="sae.safetensors is damaged"):  # its checksum
        load_sae(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    del config["checksums"]  # as an older vlmsae wrote it, or a run that diverged
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"non-finite weights \\({found}\\)"):
        load_sae(path)


def _dictionary_learning(tmp_path, trainer=None, poison=False):
    d, s = 6, 12
    g = torch.Generator().manual_seed(0)
    sd = {
        "encoder.weight": torch.randn(s, d, generator=g),
        "encoder.bias": torch.zeros(s),
        "decoder.weight": torch.randn(d, s, generator=g),
        "bias": torch.zeros(d),
    }
    if poison:
        sd["decoder.weight"][2, 7] = float("nan")
    torch.save(sd, tmp_path / "ae.pt")
    if trainer is not None:
        (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer}))
    return tmp_path / "ae.pt"


def test_convert_refuses_non_finite_weights_and_a_string_trainer(tmp_path):
    assert convert_dictionary_learning(_dictionary_learning(tmp_path)).cfg.d_sae == 12
    with pytest.raises(ConvertError, match=r"non-finite weights \(W_dec: 1 NaN\)"):
        convert_dictionary_learning(_dictionary_learning(tmp_path, poison=True))
    with pytest.raises(ConvertError, match="'trainer' is a str, not the object"):
        convert_dictionary_learning(_dictionary_learning(tmp_path, trainer="AutoEncoder"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema": 1, "d_in": 8}), "has no 'sae' section"),
        (json.dumps([1, 2]), "has no 'sae' section"),
        (json.dumps({"sae": {"d_sae": 32, "sparsity": "topk", "k": 4}}), "not a valid SAE config"),
    ],
)
def test_damaged_config_json_is_one_clear_error(tmp_path, text, message):
    path = _saved_sae(tmp_path)
    (path / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_sae(path)


def test_code_store_refuses_non_finite_codes(tmp_path):
    w = StoreWriter(tmp_path / "c", 4, kind="codes", dtype="float16")
    w.add(sp.csr_matrix(np.array([[0, 1.0, 0, 2.0]], np.float32)), [0])
    with pytest.raises(ValueError, match="SAE codes contain NaN or Inf"):
        w.add(sp.csr_matrix(np.array([[0, np.nan, 0, 0]], np.float32)), [1])
    with pytest.raises(ValueError, match="SAE codes contain NaN or Inf"):  # float16 overflow
        w.add(sp.csr_matrix(np.array([[0, 0, 1e6, 0]], np.float32)), [1])


def test_one_non_finite_embedding_row_is_refused_with_its_image(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    w = StoreWriter(tmp_path / "emb", 5, kind="embeddings", shard_rows=16)
    for i in range(n):
        if i == 30:
            w.skip(i, f"img{i}.png", "truncated")  # rows and images differ from here on
        else:
            w.add(rng.normal(size=(1, 5)).astype(np.float32), [i])
        w.mark(i + 1)
    emb = w.close(images=[f"img{i}.png" for i in range(n)])
    acts = rng.random((len(emb), 7))
    assert np.isfinite(monosemanticity(acts, emb, chunk_rows=8).ms).all()
    shard = np.load(tmp_path / "emb" / "shard-00002.npy", mmap_mode="r+")  # rows 32..
    shard[1, 2], shard[5, 0] = np.nan, np.inf  # rows 33 and 37: images 34 and 38
    shard.flush()
    del shard
    with pytest.raises(UserError, match=r"shard-00002\.npy is damaged"):  # by its checksum
        monosemanticity(acts, ActivationStore(tmp_path / "emb"), chunk_rows=8)
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    del manifest["checksums"]  # as an older vlmsae wrote it: the NaN check still holds
    (tmp_path / "emb" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as e:
        monosemanticity(acts, ActivationStore(tmp_path / "emb"), chunk_rows=8)
    assert "2 of the embeddings" in str(e.value)
    assert "rows 33, 37 (images img34.png, img38.png)" in str(e.value)
    assert "would make every score NaN" in str(e.value)


def test_relative_data_path_gives_a_store_readable_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "work" / "imgs").mkdir(parents=True)
    for i, im in enumerate(random_images(5)):
        im.save(tmp_path / "work" / "imgs" / f"{i}.png")
    monkeypatch.chdir(tmp_path / "work")
    data = load_dataset("imgs")
    cfg = CacheConfig(layers=(1,), batch_size=4, workers=0, progress=False)
    result = cache_activations(Encoder(make_clip(2), clip_processor()), data, "out", cfg)
    monkeypatch.chdir(tmp_path)  # somewhere else, as `grid` might be run
    store = ActivationStore(tmp_path / "work" / result.stores["layer_1"])
    assert store.manifest["dataset_root"] == str(tmp_path / "work" / "imgs")
    assert len(store.images) == 5
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in store.images)
