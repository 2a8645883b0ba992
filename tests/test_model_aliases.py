"""One alias table for every --model / --clip / --llava: `toyworld[:WORLD][/MODEL]` names the
shipped toy models and never reaches the hub; a name that cannot be a hub id fails at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny_models import random_images
from vlmsae.cli import app
from vlmsae.core.errors import UserError
from vlmsae.data.store import ActivationStore
from vlmsae.encoders.hub import TOY_MODELS_DIR, resolve_alias


def test_aliases_name_the_shipped_folders():
    assert resolve_alias("toyworld") == str(TOY_MODELS_DIR / "clip")
    assert resolve_alias("toyworld", "llava") == str(TOY_MODELS_DIR / "llava")
    assert resolve_alias("toyworld:emoji") == str(TOY_MODELS_DIR / "emoji" / "clip")
    assert resolve_alias("toyworld:emoji/llava", "clip") == str(TOY_MODELS_DIR / "emoji" / "llava")
    for path in ("toyworld", "toyworld:emoji"):
        assert (Path(resolve_alias(path)) / "config.json").is_file()
    assert resolve_alias("openai/clip-vit-large-patch14-336") == "openai/clip-vit-large-patch14-336"
    for bad in ("toyworld:mars", "toyworld/gpt", "toyworld:emoji/"):
        with pytest.raises(UserError, match="is not a toy-world model alias"):
            resolve_alias(bad)


def test_a_local_folder_named_like_an_alias_wins(tmp_path, monkeypatch):
    (tmp_path / "toyworld").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_alias("toyworld") == "toyworld"


def test_cache_takes_the_toy_alias(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    for i, im in enumerate(random_images(3)):
        im.save(data / f"{i}.png")
    args = ["cache", "--model", "toyworld", "--data", str(data), "--out", str(tmp_path / "acts"),
            "--layer", "1", "--tokens", "cls", "--workers", "0", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = ActivationStore(tmp_path / "acts" / "layer_1")
    assert len(store) == 3 and store.manifest["model"] == str(TOY_MODELS_DIR / "clip")


@pytest.mark.parametrize("model", ["toyworld:mars", "not a model!", "a::b"])
def test_a_name_that_cannot_exist_fails_at_once_without_the_hub(model, tmp_path, monkeypatch):
    import transformers

    random_images(1)[0].save(tmp_path / "0.png")

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the hub was asked for {args}")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    args = ["cache", "--model", model, "--data", str(tmp_path), "--out", str(tmp_path / "a"),
            "--layer", "1", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert "alias" in result.output and not (tmp_path / "a").exists()


def test_the_toy_dino_is_an_encoder_of_its_own(tmp_path):
    """The independent embedder loads through the alias like a real DINOv2 and embeds images."""
    from vlmsae.encoders.adapters import Encoder
    from vlmsae.encoders.cache import embed_images

    data = tmp_path / "imgs"
    data.mkdir()
    for i, im in enumerate(random_images(4)):
        im.save(data / f"{i}.png")
    enc = Encoder.from_pretrained("toyworld:emoji/dino")
    assert type(enc.model).__name__ == "Dinov2Model"
    embed_images(enc, data, tmp_path / "emb", workers=0, progress=False)
    store = ActivationStore(tmp_path / "emb")
    assert len(store) == 4 and store.d == enc.d_embed and store.kind == "embeddings"


def test_a_tiny_dino_build_records_how_it_tracks_the_truth(tmp_path):
    from vlmsae.toyworld.build import BuildConfig, build_toyworld
    from vlmsae.toyworld.ssl import SslTrainConfig

    cfg = BuildConfig(world="shapes", n_train=64, dino=SslTrainConfig(steps=3, batch_size=8))
    record = build_toyworld(tmp_path, config=cfg, stages=("dino",))
    assert (tmp_path / "dino" / "config.json").is_file() and "dino_s" in record["timings"]
    truth = record["dino_vs_truth"]
    assert truth["oracle"]["spearman_vs_truth"] == pytest.approx(1.0)
    assert -1 <= truth["dino"]["spearman_vs_truth"] <= 1 and "clip" not in truth
    again = build_toyworld(tmp_path, config=cfg, stages=("dino",), overwrite=True)
    assert again["dino_vs_truth"] == truth  # deterministic: the same weights, the same figures
