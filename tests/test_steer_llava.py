"""Steering on a tiny random LLaVA (CLIP vision tower + Llama), built from configs."""

from __future__ import annotations

import pytest
import torch

from tiny_models import make_llava, random_images

QUESTION = "what is this shape ?"


@pytest.fixture(scope="module")
def llava():
    from vlmsae.steer.llava import wrap_llava

    torch.set_num_threads(1)
    model, processor = make_llava(n_layers=4)  # reads block 2 (vision_feature_layer = -2)
    return wrap_llava(model, processor, "tiny-llava")


@pytest.fixture(scope="module")
def sae():
    """A ReLU SAE whose neuron 3 is constant (code 2.0 on every token) and neuron 5 dead."""
    from vlmsae import SAE, SAEConfig

    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, sparsity="relu", k=None)).eval()
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, 3] = 0.0
        sae.b_enc[3] = 2.0
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = -1.0
    return sae


@pytest.fixture(scope="module")
def images():
    return random_images(3, seed=0)


def _logits(llava, images):
    from vlmsae.steer.llava import next_token_logits

    return next_token_logits(llava, images, QUESTION)


def test_clamping_changes_logits_and_detaches_cleanly(llava, sae, images):
    from vlmsae.steer.steering import steer_sae

    base = _logits(llava, images)
    for mode in ("replace", "preserve"):
        with steer_sae(llava.encoder, sae, 1, {7: 50.0}, mode=mode):
            steered = _logits(llava, images)
        assert (steered - base).abs().max() > 1e-3, mode
    assert torch.equal(_logits(llava, images), base)  # the hook is gone


def test_preserve_mode_with_alpha_equal_to_current_code_is_exact(llava, sae, images):
    from vlmsae.steer.llava import generate_ids
    from vlmsae.steer.steering import steer_sae

    base = _logits(llava, images)
    base_ids = generate_ids(llava, images, QUESTION, max_new_tokens=4)
    for neurons in ({3: 2.0}, {5: 0.0}, {3: 2.0, 5: 0.0}):
        with steer_sae(llava.encoder, sae, 2, neurons, mode="preserve"):
            assert torch.equal(_logits(llava, images), base), neurons
            assert generate_ids(llava, images, QUESTION, max_new_tokens=4) == base_ids
    with steer_sae(llava.encoder, sae, 2, {3: 2.5}, mode="preserve"):
        assert not torch.equal(_logits(llava, images), base)


def test_pre_zero_and_replace_differ_from_plain_clamp(llava, sae, images):
    from vlmsae.steer.steering import steer_sae

    outs = []
    for pre_zero in (False, True):
        with steer_sae(llava.encoder, sae, 0, {7: 10.0}, mode="replace", pre_zero=pre_zero):
            outs.append(_logits(llava, images))
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_batched_generation_equals_one_by_one(llava, sae):
    from vlmsae.steer.llava import generate, generate_ids
    from vlmsae.steer.steering import steer_sae

    imgs = random_images(5, seed=3, size=(37, 53))
    questions = [QUESTION, "what is this ?", QUESTION, "is this a shape ?", "what ?"]
    with steer_sae(llava.encoder, sae, 1, {7: 30.0}, mode="replace"):
        batched = generate_ids(llava, imgs, questions, max_new_tokens=5, batch_size=5)
        single = [
            generate_ids(llava, [im], q, max_new_tokens=5)[0]
            for im, q in zip(imgs, questions, strict=True)
        ]
        texts = generate(llava, imgs, questions, max_new_tokens=5, batch_size=2)
    assert batched == single
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)


def test_later_block_than_llava_reads_is_refused(llava, sae):
    from vlmsae.steer.diffmean import DiffMeanHook
    from vlmsae.steer.steering import steer_sae

    n_hooks = [len(b._forward_hooks) for b in llava.encoder.blocks]  # transformers' own hooks
    with pytest.raises(ValueError, match="reads the vision tower at block 2"):
        steer_sae(llava.encoder, sae, 3, {7: 10.0})
    with pytest.raises(ValueError, match="reads the vision tower at block 2"):
        steer_sae(llava.encoder, sae, -1, {7: 10.0})
    with pytest.raises(ValueError, match="never reaches"):
        DiffMeanHook(llava.encoder, 3, torch.ones(32), "insert", 1.0)
    # nothing was left attached by the refused calls
    assert [len(b._forward_hooks) for b in llava.encoder.blocks] == n_hooks


def test_bad_clamp_requests(llava, sae):
    from vlmsae.steer.steering import SAESteering, steer_sae

    with pytest.raises(ValueError, match="out of range"):
        steer_sae(llava.encoder, sae, 1, {64: 1.0})
    with pytest.raises(ValueError, match="empty"):
        steer_sae(llava.encoder, sae, 1, {})
    with pytest.raises(ValueError, match="mode"):
        steer_sae(llava.encoder, sae, 1, {1: 1.0}, mode="error")
    with pytest.raises(ValueError, match="at least one neuron"):
        SAESteering(sae, 1, ())


def test_diffmean_insert_and_suppress(llava, images):
    from vlmsae.steer.diffmean import DiffMeanHook, DiffMeanSteering

    enc = llava.encoder
    base = _logits(llava, images)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with DiffMeanSteering(direction, 1, "insert").attach(enc, 0.0):
        assert torch.equal(_logits(llava, images), base)  # α = 0 adds nothing
    with DiffMeanSteering(direction, 1, "insert").attach(enc, 20.0):
        assert (_logits(llava, images) - base).abs().max() > 1e-3
    with DiffMeanSteering(direction, 1, "suppress").attach(enc, 1.0):
        assert (_logits(llava, images) - base).abs().max() > 1e-5
    assert torch.equal(_logits(llava, images), base)
    # suppression removes the component along the direction exactly
    hook = DiffMeanHook(enc, 1, direction, "suppress", 1.0)
    hook.remove()
    h = torch.randn(2, 5, 32)
    unit = direction / direction.norm()
    assert (hook.apply(h) @ unit).abs().max() < 1e-5
    with pytest.raises(ValueError, match="width"):
        DiffMeanHook(enc, 1, torch.ones(7), "insert", 1.0)


def test_save_and_load_llava_round_trip(llava, images, tmp_path):
    from vlmsae.steer.llava import load_llava

    llava.model.save_pretrained(tmp_path)
    llava.processor.save_pretrained(tmp_path)
    loaded = load_llava(tmp_path)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(_logits(loaded, images), _logits(llava, images))
    with pytest.raises(ValueError, match="float16 on CPU"):
        load_llava(tmp_path, dtype="fp16")
