"""The caching pipeline: stores equal direct capture, bad files are listed, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from image_files import BAD, GOOD, make_mixed_folder
from tiny_models import WIDTH, TinySAE, clip_processor, make_clip, make_siglip, siglip_processor
from vlmsae.data.images import load_dataset, open_rgb
from vlmsae.data.store import ActivationStore
from vlmsae.encoders import Encoder, TokenSelection, select_tokens
from vlmsae.encoders.cache import CacheConfig, cache_activations, embed_images
from vlmsae.encoders.codes import sae_codes

N_LAYERS = 4


@pytest.fixture(scope="module")
def clip() -> Encoder:
    return Encoder(make_clip(N_LAYERS), clip_processor())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_mixed_folder(tmp_path_factory.mktemp("mixed")))


@pytest.fixture(scope="module")
def direct(clip, dataset) -> list[tuple[int, dict]]:
    """Reference: each good image decoded and captured alone, without the pipeline."""
    out = []
    for i, path in enumerate(dataset.paths):
        decoded = open_rgb(path)
        if decoded.image is not None:
            out.append((i, clip.capture(clip.preprocess([decoded.image]), [1, 3])))
    return out


def _direct(direct, layer: int, tokens: str) -> tuple[np.ndarray, np.ndarray]:
    rows, index = [], []
    for i, hidden in direct:
        sel = select_tokens(hidden[layer], TokenSelection.parse(tokens), np.array([i]))
        rows.append(sel.acts_RD.numpy())
        index.append(np.stack([sel.image_R, sel.token_R], 1))
    return np.concatenate(rows), np.concatenate(index)


@pytest.mark.parametrize("tokens", ["cls", "all", "random:4"])
def test_cache_equals_direct_capture_and_lists_bad_files(clip, dataset, direct, tmp_path, tokens):
    cfg = CacheConfig(
        layers=(1, -1),
        hookpoints=("post_mlp_residual", "post_projection"),
        tokens=tokens,
        dtype="float32",
        batch_size=4,
        workers=1 if tokens == "cls" else 0,
        progress=False,
    )
    result = cache_activations(clip, dataset, tmp_path, cfg)
    assert set(result.stores) == {"layer_1", "layer_3", "post_projection"}
    assert result.n_images == len(dataset) and result.n_skipped == len(BAD)
    for layer in (1, 3):
        store = ActivationStore(tmp_path / f"layer_{layer}")
        want, want_rows = _direct(direct, layer, tokens)
        np.testing.assert_allclose(store.to_numpy(), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(store.rows, want_rows)
        m = store.manifest
        assert (m["model"], m["hookpoint"], m["layer"], m["tokens"]) == (
            clip.name,
            "post_mlp_residual",
            layer,
            tokens,
        )
        assert m["n_images"] == len(dataset) and store.images == list(dataset.paths)
        skipped = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
        assert set(skipped) == set(BAD) and all(skipped.values())
    proj = ActivationStore(tmp_path / "post_projection")
    good = [i for i, p in enumerate(dataset.paths) if Path(p).name not in BAD]
    np.testing.assert_array_equal(proj.rows[:, 0], good)
    assert proj.d == clip.d_embed and (proj.rows[:, 1] == -1).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_skipped"] == len(BAD) and summary["images_per_s"] > 0


def test_interrupted_then_resumed_equals_uninterrupted(clip, dataset, tmp_path):
    cfg = CacheConfig(
        layers=(0, 2),
        hookpoints=("post_mlp_residual", "post_projection"),
        tokens="random:3",
        batch_size=3,
        workers=0,
        shard_rows=5,
        progress=False,
    )
    sae = TinySAE(clip.d_model, 48)
    full = cache_activations(clip, dataset, tmp_path / "full", cfg, sae=sae, sae_hookpoint=2)

    calls = {"n": 0}
    original = clip.capture

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the run dies after 3 batches
        return original(*args, **kwargs)

    clip.capture = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            cache_activations(clip, dataset, tmp_path / "part", cfg, sae=sae, sae_hookpoint=2)
    finally:
        del clip.capture
    partial = json.loads((tmp_path / "part" / "layer_0" / "manifest.json").read_text())
    assert not partial["complete"] and 0 < partial["shards"][-1]["images_end"] < len(dataset)
    with pytest.raises(FileExistsError, match="resume"):
        cache_activations(clip, dataset, tmp_path / "part", cfg, sae=sae, sae_hookpoint=2)
    resumed_cfg = CacheConfig(**{**cfg.__dict__, "resume": True})
    cache_activations(clip, dataset, tmp_path / "part", resumed_cfg, sae=sae, sae_hookpoint=2)
    for name in full.stores:
        a, b = ActivationStore(tmp_path / "full" / name), ActivationStore(tmp_path / "part" / name)
        if a.is_sparse:
            assert (a.read(0, len(a)) != b.read(0, len(b))).nnz == 0
        else:
            np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
        np.testing.assert_array_equal(a.rows, b.rows)
        assert a.manifest["skipped"] == b.manifest["skipped"]
        assert [s["rows"] for s in a.shards] == [s["rows"] for s in b.shards]


def _real_sae(d_in: int, sparsity: str = "topk"):
    from vlmsae import SAE, SAEConfig

    torch.manual_seed(0)
    cfg = SAEConfig(
        d_in=d_in, d_sae=48, sparsity=sparsity, k=5, layer=2, hookpoint="post_mlp_residual"
    )
    return SAE(cfg).eval()


@pytest.mark.parametrize("kind", ["tiny", "topk", "relu"])
def test_sae_codes_store(clip, dataset, tmp_path, kind):
    sae = TinySAE(clip.d_model, 48) if kind == "tiny" else _real_sae(clip.d_model, kind)
    cfg = CacheConfig(
        layers=(2,), tokens="all", batch_size=5, workers=0, progress=False, dtype="float32"
    )
    result = cache_activations(clip, dataset, tmp_path, cfg, sae=sae)
    codes = ActivationStore(result.stores["codes_layer_2"])
    acts = ActivationStore(result.stores["layer_2"])
    assert codes.is_sparse and codes.d == 48 and len(codes) == len(acts)
    with torch.no_grad():
        dense = sae.encode(torch.from_numpy(acts.to_numpy())).numpy()
    np.testing.assert_allclose(codes.to_numpy(), dense, rtol=1e-5, atol=1e-5)
    assert codes.read(0, len(codes)).nnz == int((dense != 0).sum())
    np.testing.assert_array_equal(codes.rows, acts.rows)
    small = sae_codes(sae, torch.from_numpy(acts.to_numpy()), chunk_rows=7)  # chunking
    np.testing.assert_allclose(small.toarray(), dense, rtol=1e-5, atol=1e-5)
    if kind == "topk":
        assert (np.diff(codes.read(0, len(codes)).indptr) <= 5).all()


def test_embed_and_option_errors(dataset, tmp_path):
    siglip = Encoder(make_siglip(2), siglip_processor())
    result = embed_images(siglip, dataset, tmp_path / "emb", workers=0, progress=False)
    store = ActivationStore(result.stores["embeddings"])
    assert store.kind == "embeddings" and store.d == siglip.d_embed
    assert len(store) == len(dataset) - len(BAD) == 2 * len(GOOD)
    with pytest.raises(ValueError, match="no CLS token"):
        cache_activations(siglip, dataset, tmp_path / "x", CacheConfig(layers=(0,)))
    with pytest.raises(ValueError, match="hook point"):
        CacheConfig(layers=(0,), hookpoints=("post_mlp",))
    with pytest.raises(ValueError, match="layer"):
        CacheConfig(hookpoints=("post_mlp_residual",))


def test_cli_cache_embed_inspect(dataset, tmp_path):
    from typer.testing import CliRunner

    from tiny_models import make_clip_full
    from vlmsae.cli import app

    model_dir = tmp_path / "model"
    make_clip_full(N_LAYERS).save_pretrained(model_dir)
    clip_processor().save_pretrained(model_dir)
    runner = CliRunner()
    out = tmp_path / "acts"
    args = [
        "cache",
        "--model",
        str(model_dir),
        "--data",
        dataset.root,
        "--out",
        str(out),
        "--layer",
        "1,-1",
        "--hookpoint",
        "post_mlp_residual,post_projection",
        "--tokens",
        "mean",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--limit",
        "9",
        "--every",
        "2",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = ActivationStore(out / "layer_3")
    assert store.manifest["n_images"] == 9 and store.manifest["tokens"] == "mean"
    assert store.images == list(dataset.paths[::2][:9])
    assert (out / "post_projection" / "manifest.json").exists()
    again = runner.invoke(app, [*args, "--resume"])  # a complete run resumes to a no-op
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(ActivationStore(out / "layer_3").to_numpy(), store.to_numpy())
    bad = runner.invoke(app, [*args[:-2], "--tokens", "first"])
    assert bad.exit_code != 0 and "cls" in bad.output
    exists = runner.invoke(app, args)  # a complete store is never overwritten
    assert exists.exit_code == 2 and "already holds a complete store" in exists.output

    sae_dir = _real_sae(WIDTH).save(tmp_path / "sae")  # its config says layer=2
    with_codes = runner.invoke(
        app,
        [
            "cache",
            "--model",
            str(model_dir),
            "--data",
            dataset.root,
            "--out",
            str(tmp_path / "codes"),
            "--layer",
            "2",
            "--workers",
            "0",
            "--limit",
            "6",
            "--sae",
            str(sae_dir),
        ],
    )
    assert with_codes.exit_code == 0, with_codes.output
    codes = ActivationStore(tmp_path / "codes" / "codes_layer_2")
    assert codes.is_sparse and codes.d == 48 and len(codes) == 6

    emb = tmp_path / "emb"
    result = runner.invoke(
        app,
        [
            "embed",
            "--model",
            str(model_dir),
            "--data",
            dataset.root,
            "--out",
            str(emb),
            "--workers",
            "0",
            "--limit",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert ActivationStore(emb).kind == "embeddings"
    assert json.loads((emb / "summary.json").read_text())["n_images"] == 5
    shown = runner.invoke(app, ["inspect", str(out / "layer_3")])
    assert "post_mlp_residual" in shown.output and str(model_dir) in shown.output
