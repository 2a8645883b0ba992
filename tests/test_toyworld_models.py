"""The shipped toy CLIP and LLaVA: they load like hub models and meet the bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPModel,
    CLIPProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from vlmsae.data.store import ActivationStore
from vlmsae.toyworld import MODELS_DIR, clip_path, llava_path
from vlmsae.toyworld.batches import make_batch
from vlmsae.toyworld.embeddings import write_clip_embeddings
from vlmsae.toyworld.evaluate import BARS, clip_zero_shot, llava_accuracy
from vlmsae.toyworld.export import export_imagefolder, read_exported
from vlmsae.toyworld.llava import (
    VISION_FEATURE_LAYER,
    make_sequences,
    sequence_loss,
    vision_features,
)
from vlmsae.toyworld.shapes import QUESTIONS, all_captions, make_world
from vlmsae.toyworld.tokenizer import llava_prompt

N_CLIP, N_LLAVA = 300, 100  # fixed held-out sample (test split, seed 0)


@pytest.fixture(scope="module")
def clip():
    return CLIPModel.from_pretrained(clip_path()).eval(), CLIPProcessor.from_pretrained(clip_path())


@pytest.fixture(scope="module")
def llava():
    path = llava_path()
    return LlavaForConditionalGeneration.from_pretrained(
        path
    ).eval(), LlavaProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def sample():
    return make_world("test", N_CLIP, seed=0)


def test_shipped_models_are_small_safetensors_folders():
    files = [p for p in MODELS_DIR.rglob("*") if p.is_file()]
    # both worlds' CLIP, LLaVA and toy DINOv2: 20.8 MiB, within the package's 30 MB budget
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    for name in ("clip", "llava", "dino", "emoji/clip", "emoji/llava", "emoji/dino"):
        names = {p.name for p in (MODELS_DIR / name).iterdir()}
        need = {"config.json", "model.safetensors"} | (
            {"tokenizer.json"} if "dino" not in name else set()
        )
        assert need <= names, names
        assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert isinstance(AutoProcessor.from_pretrained(clip_path()), CLIPProcessor)
    assert isinstance(AutoProcessor.from_pretrained(llava_path()), LlavaProcessor)


def test_clip_architecture(clip):
    vcfg = clip[0].config.vision_config
    assert vcfg.patch_size == 8 and vcfg.image_size == 32
    assert 128 <= vcfg.hidden_size <= 256 and vcfg.num_hidden_layers == 6


def test_training_pixels_are_what_the_shipped_processors_make(clip, llava, sample):
    images, records = sample
    pix = clip[1](images=images[:8], return_tensors="pt")["pixel_values"]
    assert pix.shape == (8, 3, 32, 32)
    via_llava = llava[1](images=images[:8], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pix, via_llava)
    torch.testing.assert_close(pix, make_batch(records[:8]).pixel_values_NCHW)


def test_tokenizer_round_trips_every_caption(clip):
    tok = clip[1].tokenizer
    for text in all_captions()[::7] + list(QUESTIONS):
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert ids[-1] == tok.eos_token_id
    cap = all_captions()[5]
    assert tok.decode(tok(cap)["input_ids"], skip_special_tokens=True) == cap


@pytest.fixture(scope="module")
def accuracy(clip, llava, sample):
    images, records = sample
    acc = clip_zero_shot(*clip, images, records)
    return acc | llava_accuracy(*llava, images[:N_LLAVA], records[:N_LLAVA])


@pytest.mark.parametrize("metric", list(BARS))
def test_shipped_models_meet_the_bar(accuracy, metric):
    assert accuracy[metric] >= BARS[metric], accuracy


def test_shipped_models_beat_chance_everywhere(accuracy):
    chance = {"shape": 1 / 8, "color": 1 / 8, "size": 1 / 2, "background": 1 / 4}
    for name, p in chance.items():
        assert accuracy[f"clip_{name}"] >= p - 0.05, (name, accuracy)
    assert accuracy["clip_color"] >= 0.95 and accuracy["llava_color"] >= 0.9, accuracy


def test_llava_wraps_the_clip_vision_tower(clip, llava):
    cfg = llava[0].config
    assert cfg.vision_feature_layer == VISION_FEATURE_LAYER == -2
    assert cfg.vision_feature_select_strategy == "default"
    tower = llava[0].model.vision_tower.state_dict()
    for name, value in clip[0].vision_model.state_dict().items():
        torch.testing.assert_close(tower[name], value, atol=0, rtol=0, msg=name)


def test_training_path_equals_the_model_forward(llava, sample):
    """The loss the trainer computes is the one LlavaForConditionalGeneration computes."""
    model, processor = llava
    images, records = sample
    inputs = processor(
        images=images[:4], text=[llava_prompt(QUESTIONS[2])] * 4, return_tensors="pt"
    )
    feats = vision_features(model, inputs["pixel_values"])
    n_tokens = (inputs["input_ids"][0] == model.config.image_token_id).sum().item()
    assert n_tokens == feats.shape[1] == 16
    seq = make_sequences(records[:4], [QUESTIONS[2]] * 4, n_tokens)
    prompt_len = inputs["input_ids"].shape[1]
    torch.testing.assert_close(seq.input_ids_BT[:, :prompt_len], inputs["input_ids"])
    with torch.no_grad():
        ours = sequence_loss(model, seq, feats)
        full = model(
            input_ids=seq.input_ids_BT,
            attention_mask=seq.attention_mask_BT,
            pixel_values=inputs["pixel_values"],
            labels=seq.labels_BT,
        ).loss
    torch.testing.assert_close(ours, full, atol=1e-4, rtol=1e-4)


def test_clip_embedding_store(tmp_path):
    folder = export_imagefolder(tmp_path / "toy", "val", 12, seed=0)
    store = write_clip_embeddings(folder, tmp_path / "clip-emb")
    loaded = ActivationStore(tmp_path / "clip-emb")
    assert loaded.kind == "embeddings" and len(loaded) == 12 and store.d == loaded.d
    assert loaded.images == [str(im.path) for im in read_exported(folder)]
    model, processor = (
        CLIPModel.from_pretrained(clip_path()).eval(),
        CLIPProcessor.from_pretrained(clip_path()),
    )
    images = [Image.open(im.path) for im in read_exported(folder)]
    with torch.no_grad():
        want = model(**processor(text=["a"], images=images, return_tensors="pt")).image_embeds
    got = loaded[:] / np.linalg.norm(loaded[:], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
