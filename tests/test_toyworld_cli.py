"""``vlmsae toyworld`` commands, and the (slow) deterministic build."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmsae.cli import app
from vlmsae.data.store import ActivationStore

runner = CliRunner()


def test_export_then_oracle(tmp_path):
    res = runner.invoke(app, ["toyworld", "export", str(tmp_path / "toy"), "--n", "10"])
    assert res.exit_code == 0, res.output
    split_dir = tmp_path / "toy" / "test"
    assert (split_dir / "attributes.csv").is_file() and (split_dir / "world.json").is_file()
    res = runner.invoke(app, ["toyworld", "oracle", str(split_dir), str(tmp_path / "emb")])
    assert res.exit_code == 0, res.output
    store = ActivationStore(tmp_path / "emb")
    assert len(store) == 10 and store.kind == "embeddings"


def test_export_emoji_world_and_unknown_world(tmp_path):
    args = ["toyworld", "export", str(tmp_path / "emoji"), "--n", "6", "--world", "emoji"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "emoji" / "test" / "world.json").read_text())
    assert meta["world"] == "emoji" and meta["n_images"] == 6
    res = runner.invoke(app, ["toyworld", "export", str(tmp_path / "x"), "--world", "flags"])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: unknown toy world 'flags'")
    assert "shapes, emoji" in res.stderr


def test_oracle_rejects_a_folder_without_ground_truth(tmp_path):
    res = runner.invoke(app, ["toyworld", "oracle", str(tmp_path), str(tmp_path / "emb")])
    assert res.exit_code == 2
    assert "attributes.csv" in res.stderr


def test_evaluate_prints_a_table_and_writes_json(tmp_path):
    args = ["toyworld", "evaluate", "--n", "16", "--out", str(tmp_path / "ev")]
    res = runner.invoke(app, [*args, "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "s.json").read_text())
    assert set(summary["bars"]) <= set(summary["metrics"])
    assert all(0.0 <= v <= 1.0 for v in summary["metrics"].values())
    for name in summary["metrics"]:
        assert name in res.output


@pytest.mark.slow
def test_reduced_build_is_deterministic_and_loads(tmp_path):
    import torch
    from safetensors.torch import load_file

    from vlmsae.toyworld.build import BuildConfig, build_toyworld
    from vlmsae.toyworld.clip import ClipTrainConfig
    from vlmsae.toyworld.evaluate import evaluate_toyworld
    from vlmsae.toyworld.llava import LlavaTrainConfig

    cfg = BuildConfig(
        n_train=64,
        clip=ClipTrainConfig(steps=3, batch_size=16, group_size=8),
        clip_more=((2, 1e-3),),  # exercises continued CLIP phases
        llava=LlavaTrainConfig(text_steps=2, align_steps=2, tune_steps=2, batch_size=8),
    )
    build_toyworld(tmp_path / "a", config=cfg)
    build_toyworld(tmp_path / "b", config=cfg)
    for name in ("clip", "llava"):
        a = load_file(tmp_path / "a" / name / "model.safetensors")
        b = load_file(tmp_path / "b" / name / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    summary = evaluate_toyworld(tmp_path / "a", n=8)
    assert set(summary["metrics"]) >= {"clip_shape", "llava_caption"}
    assert np.isfinite(list(summary["metrics"].values())).all()


def test_build_config_rejects_bad_clip_phases():
    from vlmsae.toyworld.build import BuildConfig

    with pytest.raises(ValueError, match="clip_more"):
        BuildConfig(clip_more=((0, 1e-3),))
    with pytest.raises(ValueError, match="clip_more"):
        BuildConfig(clip_more=((10, 2.0),))
