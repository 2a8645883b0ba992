"""Encoders: hook points equal HF hidden states, token selections, early exit, SAE attachment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    clip_processor,
    dinov2_processor,
    make_clip,
    make_clip_full,
    make_dinov2,
    make_llava,
    make_siglip,
    random_images,
    siglip_processor,
)
from torch import nn

from vlmsae.encoders import Encoder, attach_sae, find_blocks
from vlmsae.encoders.tokens import TokenSelection, random_tokens, select_tokens

N_LAYERS = 4
TOKENS = ("cls", "mean", "all", "random:3")


class TinySAE(nn.Module):
    """A stand-in SAE (ReLU encoder, linear decoder) with the encode/decode interface."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec


@pytest.fixture(scope="module")
def pixels() -> dict[str, torch.Tensor]:
    images = random_images(3)
    return {
        "clip": clip_processor()(images=images, return_tensors="pt")["pixel_values"],
        "siglip": siglip_processor()(images=images, return_tensors="pt")["pixel_values"],
        "dinov2": dinov2_processor()(images=images, return_tensors="pt")["pixel_values"],
    }


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    return {
        "clip": Encoder(make_clip(N_LAYERS), clip_processor()),
        "clip_full": Encoder(make_clip_full(N_LAYERS), clip_processor()),
        "siglip": Encoder(make_siglip(N_LAYERS), siglip_processor()),
        "dinov2": Encoder(make_dinov2(N_LAYERS), dinov2_processor()),
    }


def _reference(enc: Encoder, pv: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """hidden_states and the image embedding from the models' own public outputs."""
    model = enc.model
    with torch.no_grad():
        if hasattr(model, "get_image_features"):  # CLIPModel
            hidden = model.vision_model(pixel_values=pv, output_hidden_states=True).hidden_states
            embeds = model.get_image_features(pixel_values=pv)
            return hidden, getattr(embeds, "pooler_output", embeds)
        out = model(pixel_values=pv, output_hidden_states=True)
    embeds = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output
    return out.hidden_states, embeds


@pytest.mark.parametrize("name", ["clip", "clip_full", "siglip", "dinov2"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_capture_equals_hidden_states(encoders, pixels, name, tokens):
    enc = encoders[name]
    pv = pixels[name.split("_")[0]]
    hidden, embeds = _reference(enc, pv)
    if tokens == "cls" and not enc.has_cls:
        with pytest.raises(ValueError, match="no CLS token"):
            enc.check_tokens(tokens)
        return
    selection = TokenSelection.parse(tokens, seed=5)
    layers = [0, 1, -2, -1]
    captured = enc.capture(pv, layers, post_projection=True)
    image_B = np.arange(10, 13)
    for layer in layers:
        block = enc.layer_index(layer)
        got = select_tokens(captured[block], selection, image_B)
        want = select_tokens(hidden[block + 1], selection, image_B)
        torch.testing.assert_close(got.acts_RD, want.acts_RD, rtol=0, atol=0)
        # and against an independent selection of the reference tensor
        ref_BTD = hidden[block + 1]
        if tokens == "cls":
            torch.testing.assert_close(got.acts_RD, ref_BTD[:, 0])
        elif tokens == "mean":
            torch.testing.assert_close(got.acts_RD, ref_BTD.mean(1))
            assert (got.token_R == -1).all()
        elif tokens == "all":
            torch.testing.assert_close(got.acts_RD, ref_BTD.flatten(0, 1))
        else:
            n_tokens = ref_BTD.shape[1]
            for b, image in enumerate(image_B):
                idx = random_tokens(selection, int(image), n_tokens)
                assert len(set(idx.tolist())) == 3
                np.testing.assert_array_equal(got.token_R[b * 3 : b * 3 + 3], idx)
                torch.testing.assert_close(got.acts_RD[b * 3 : b * 3 + 3], ref_BTD[b, idx])
        assert len(got.image_R) == got.acts_RD.shape[0] == len(got.token_R)
    torch.testing.assert_close(captured["post_projection"], embeds, rtol=0, atol=0)
    assert captured["post_projection"].shape == (3, enc.d_embed)


def test_blocks_found_by_name(encoders):
    assert encoders["clip"].blocks_name.endswith("encoder.layers")
    assert encoders["dinov2"].blocks_name.endswith("encoder.layer")
    # CLIPModel has a text tower with its own `layers`: the vision blocks are chosen
    name, blocks = find_blocks(encoders["clip_full"].model)
    assert "vision" in name and len(blocks) == N_LAYERS


def test_token_selection_errors(encoders):
    for bad in ("first", "random:0", "random:x", "random"):
        with pytest.raises(ValueError, match="cls"):
            TokenSelection.parse(bad)
    with pytest.raises(ValueError, match="out of range"):
        encoders["clip"].layer_index(N_LAYERS)


def test_early_exit_stops_the_forward(encoders, pixels):
    enc = encoders["clip"]
    n_hooks = [len(b._forward_hooks) for b in enc.blocks]  # transformers adds its own
    ran: list[int] = []
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        for i, block in enumerate(enc.blocks)
    ]
    try:
        enc.capture(pixels["clip"], [0, 1])
        assert ran == [0, 1], "blocks after the deepest requested one must not run"
        ran.clear()
        enc.capture(pixels["clip"], [1], post_projection=True)
        assert ran == list(range(N_LAYERS))
    finally:
        for h in handles:
            h.remove()
    assert [len(b._forward_hooks) for b in enc.blocks] == n_hooks, "capture hooks are removed"


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_error_preserving_attachment_is_identity(encoders, pixels, name):
    enc = encoders[name]
    pv = pixels[name]
    sae = TinySAE(enc.d_model, 64)
    base = enc.embed(pv)
    with attach_sae(enc, sae, 1, mode="error"):
        same = enc.embed(pv)
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    with attach_sae(enc, sae, 1, mode="error", edit=lambda z: z):
        also_same = enc.embed(pv)
    torch.testing.assert_close(also_same, base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.embed(pv), base, rtol=0, atol=0)  # removed on exit


def test_replace_mode_changes_block_by_sae_error(encoders, pixels):
    enc = encoders["clip"]
    pv = pixels["clip"]
    sae = TinySAE(enc.d_model, 64)
    h = enc.capture(pv, [1])[1]
    reconstruction = sae.decode(sae.encode(h)).detach()
    with attach_sae(enc, sae, 1, mode="replace"):
        got = enc.capture(pv, [1, 2])
    torch.testing.assert_close(got[1], reconstruction)
    assert (got[1] - h).abs().max() > 1e-3, "the SAE error is not zero for a random SAE"
    # block 2 read the reconstruction: it equals block 2 applied to decode(encode(h))
    with torch.no_grad():
        want = enc.blocks[2](reconstruction, None)
    torch.testing.assert_close(got[2], want[0] if isinstance(want, tuple) else want)


def test_edit_clamps_a_neuron(encoders, pixels):
    enc = encoders["clip"]
    pv = pixels["clip"]
    sae = TinySAE(enc.d_model, 64)
    h = enc.capture(pv, [1])[1]

    def clamp(z):
        z[..., 7] = 5.0
        return z

    with attach_sae(enc, sae, 1, mode="error", edit=clamp):
        got = enc.capture(pv, [1])[1]
    z = sae.encode(h)
    delta = (5.0 - z[..., 7:8]) * sae.W_dec[7]
    torch.testing.assert_close(got, h + delta.detach(), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def llava():
    model, processor = make_llava(N_LAYERS)
    inputs = processor(
        images=random_images(1, seed=3), text="<image> what is this ?", return_tensors="pt"
    )
    return Encoder(model, processor.image_processor), inputs


def _logits(enc: Encoder, inputs) -> torch.Tensor:
    with torch.no_grad():
        return enc.model(**inputs).logits


def test_llava_read_layers_and_edits(llava):
    enc, inputs = llava
    assert enc.family == "llava"
    assert enc.read_layers == (N_LAYERS - 2,)  # vision_feature_layer = -2
    assert enc.affects_output(-2) and not enc.affects_output(-1)
    base = _logits(enc, inputs)
    sae = TinySAE(enc.d_model, 64)

    def big(z):
        return z + 3.0

    with attach_sae(enc, sae, -2, mode="error", edit=big) as handle:
        assert handle.affects_output
        edited = _logits(enc, inputs)
    assert (edited - base).abs().max() > 1e-3, "an edit at the layer LLaVA reads changes logits"
    with attach_sae(enc, sae, -1, mode="error", edit=big) as handle:
        assert not handle.affects_output
        unread = _logits(enc, inputs)
    torch.testing.assert_close(unread, base, rtol=0, atol=0)
    with attach_sae(enc, sae, -2, mode="error"):
        torch.testing.assert_close(_logits(enc, inputs), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(enc, inputs), base, rtol=0, atol=0)


def test_llava_capture_and_projection_error(llava):
    enc, inputs = llava
    with torch.no_grad():
        hidden = enc.vision(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    got = enc.capture(inputs["pixel_values"], [-2])[N_LAYERS - 2]
    torch.testing.assert_close(got, hidden.hidden_states[-2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="post_projection"):
        enc.embed(inputs["pixel_values"])


def test_from_pretrained_loads_saved_folders(tmp_path, encoders, pixels):
    """A folder written by save_pretrained loads through the same code path as a hub id."""
    enc = encoders["clip_full"]
    enc.model.save_pretrained(tmp_path)
    clip_processor().save_pretrained(tmp_path)
    loaded = Encoder.from_pretrained(tmp_path)
    assert type(loaded.model).__name__ == "CLIPModel"
    assert type(loaded.processor).__name__ == "CLIPImageProcessorPil"
    assert loaded.name == str(tmp_path)
    pv = loaded.preprocess(random_images(3))
    torch.testing.assert_close(pv, pixels["clip"])
    torch.testing.assert_close(loaded.embed(pv), enc.embed(pv))
