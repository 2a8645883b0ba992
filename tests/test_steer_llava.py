"""Steering on a tiny random LLaVA (CLIP vision tower + Llama), built from configs.

The `tiny_llava` and `tiny_sae` fixtures are in conftest.py."""

from __future__ import annotations

import pytest
import torch

from tiny_models import random_images

QUESTION = "what is this shape ?"


@pytest.fixture(scope="module")
def images():
    return random_images(3, seed=0)


def _logits(llava, images):
    from vlmsae.steer.llava import next_token_logits

    return next_token_logits(llava, images, QUESTION)


def test_clamping_changes_logits_and_detaches_cleanly(tiny_llava, tiny_sae, images):
    from vlmsae.steer.steering import steer_sae

    base = _logits(tiny_llava, images)
    for mode in ("replace", "preserve"):
        with steer_sae(tiny_llava.encoder, tiny_sae, 1, {7: 50.0}, mode=mode):
            steered = _logits(tiny_llava, images)
        assert (steered - base).abs().max() > 1e-3, mode
    assert torch.equal(_logits(tiny_llava, images), base)  # the hook is gone


def test_preserve_mode_with_alpha_equal_to_current_code_is_exact(tiny_llava, tiny_sae, images):
    from vlmsae.steer.llava import generate_ids
    from vlmsae.steer.steering import steer_sae

    base = _logits(tiny_llava, images)
    base_ids = generate_ids(tiny_llava, images, QUESTION, max_new_tokens=4)
    for neurons in ({3: 2.0}, {5: 0.0}, {3: 2.0, 5: 0.0}):
        with steer_sae(tiny_llava.encoder, tiny_sae, 2, neurons, mode="preserve"):
            assert torch.equal(_logits(tiny_llava, images), base), neurons
            assert generate_ids(tiny_llava, images, QUESTION, max_new_tokens=4) == base_ids
    with steer_sae(tiny_llava.encoder, tiny_sae, 2, {3: 2.5}, mode="preserve"):
        assert not torch.equal(_logits(tiny_llava, images), base)


def test_pre_zero_and_replace_differ_from_plain_clamp(tiny_llava, tiny_sae, images):
    from vlmsae.steer.steering import steer_sae

    outs = []
    for pre_zero in (False, True):
        with steer_sae(
            tiny_llava.encoder, tiny_sae, 0, {7: 10.0}, mode="replace", pre_zero=pre_zero
        ):
            outs.append(_logits(tiny_llava, images))
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_batched_generation_equals_one_by_one(tiny_llava, tiny_sae):
    from vlmsae.steer.llava import generate, generate_ids
    from vlmsae.steer.steering import steer_sae

    imgs = random_images(5, seed=3, size=(37, 53))
    questions = [QUESTION, "what is this ?", QUESTION, "is this a shape ?", "what ?"]
    with steer_sae(tiny_llava.encoder, tiny_sae, 1, {7: 30.0}, mode="replace"):
        batched = generate_ids(tiny_llava, imgs, questions, max_new_tokens=5, batch_size=5)
        single = [
            generate_ids(tiny_llava, [im], q, max_new_tokens=5)[0]
            for im, q in zip(imgs, questions, strict=True)
        ]
        texts = generate(tiny_llava, imgs, questions, max_new_tokens=5, batch_size=2)
    assert batched == single
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)


def test_later_block_than_llava_reads_is_refused(tiny_llava, tiny_sae):
    from vlmsae.steer.diffmean import DiffMeanHook
    from vlmsae.steer.steering import steer_sae

    n_hooks = [len(b._forward_hooks) for b in tiny_llava.encoder.blocks]  # transformers' own hooks
    with pytest.raises(ValueError, match="reads the vision tower at block 2"):
        steer_sae(tiny_llava.encoder, tiny_sae, 3, {7: 10.0})
    with pytest.raises(ValueError, match="reads the vision tower at block 2"):
        steer_sae(tiny_llava.encoder, tiny_sae, -1, {7: 10.0})
    with pytest.raises(ValueError, match="never reaches"):
        DiffMeanHook(tiny_llava.encoder, 3, torch.ones(32), "insert", 1.0)
    # nothing was left attached by the refused calls
    assert [len(b._forward_hooks) for b in tiny_llava.encoder.blocks] == n_hooks


def test_bad_clamp_requests(tiny_llava, tiny_sae):
    from vlmsae.steer.steering import SAESteering, steer_sae

    with pytest.raises(ValueError, match="out of range"):
        steer_sae(tiny_llava.encoder, tiny_sae, 1, {64: 1.0})
    with pytest.raises(ValueError, match="empty"):
        steer_sae(tiny_llava.encoder, tiny_sae, 1, {})
    with pytest.raises(ValueError, match="mode"):
        steer_sae(tiny_llava.encoder, tiny_sae, 1, {1: 1.0}, mode="error")
    with pytest.raises(ValueError, match="at least one neuron"):
        SAESteering(tiny_sae, 1, ())


def test_diffmean_insert_and_suppress(tiny_llava, images):
    from vlmsae.steer.diffmean import DiffMeanHook, DiffMeanSteering

    enc = tiny_llava.encoder
    base = _logits(tiny_llava, images)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with DiffMeanSteering(direction, 1, "insert").attach(enc, 0.0):
        assert torch.equal(_logits(tiny_llava, images), base)  # α = 0 adds nothing
    with DiffMeanSteering(direction, 1, "insert").attach(enc, 20.0):
        assert (_logits(tiny_llava, images) - base).abs().max() > 1e-3
    with DiffMeanSteering(direction, 1, "suppress").attach(enc, 1.0):
        assert (_logits(tiny_llava, images) - base).abs().max() > 1e-5
    assert torch.equal(_logits(tiny_llava, images), base)
    # suppression removes the component along the direction exactly
    hook = DiffMeanHook(enc, 1, direction, "suppress", 1.0)
    hook.remove()
    h = torch.randn(2, 5, 32)
    unit = direction / direction.norm()
    assert (hook.apply(h) @ unit).abs().max() < 1e-5
    with pytest.raises(ValueError, match="width"):
        DiffMeanHook(enc, 1, torch.ones(7), "insert", 1.0)


def test_save_and_load_llava_round_trip(tiny_llava, images, tmp_path):
    from vlmsae.steer.llava import load_llava

    tiny_llava.model.save_pretrained(tmp_path)
    tiny_llava.processor.save_pretrained(tmp_path)
    loaded = load_llava(tmp_path)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(_logits(loaded, images), _logits(tiny_llava, images))
    with pytest.raises(ValueError, match="float16 on CPU"):
        load_llava(tmp_path, dtype="fp16")
