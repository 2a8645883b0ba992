"""The real models' geometry, with random weights and only the width shrunk.

Each model is built from its published checkpoint's configuration with everything that
decides behaviour kept — image size, patch size, hence token counts, number of blocks, CLS
or not, register tokens, the pooling head, LLaVA's ``vision_feature_layer`` and select
strategy — and only ``hidden_size`` / ``intermediate_size`` / ``num_attention_heads`` made
tiny. The image processors use the checkpoints' real settings (resize, crop, mean / std).
The values below are copied from the public ``config.json`` / ``preprocessor_config.json``
of each checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import make_tokenizer
from vlmsae.encoders import Encoder, attach_sae
from vlmsae.encoders.tokens import TokenSelection, select_tokens
from vlmsae.sae import SAE, SAEConfig

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BICUBIC = 3

# openai/clip-vit-large-patch14-336 (also LLaVA-1.5's vision tower)
CLIP_L_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=24,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
CLIP_L_336_PROCESSOR = dict(
    do_resize=True,
    size={"shortest_edge": 336},
    resample=BICUBIC,
    do_center_crop=True,
    crop_size={"height": 336, "width": 336},
    do_normalize=True,
    image_mean=OPENAI_MEAN,
    image_std=OPENAI_STD,
)
# google/siglip-so400m-patch14-384
SIGLIP_SO400M_384 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_attention_heads=16,
    num_hidden_layers=27,
    image_size=384,
    patch_size=14,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
SIGLIP_PROCESSOR = dict(
    do_resize=True,
    size={"height": 384, "width": 384},
    resample=BICUBIC,
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=[0.5] * 3,
    image_std=[0.5] * 3,
)
# facebook/dinov2-base and facebook/dinov2-with-registers-base
DINOV2_BASE = dict(
    hidden_size=768,
    num_attention_heads=12,
    num_hidden_layers=12,
    mlp_ratio=4,
    image_size=518,
    patch_size=14,
    layerscale_value=1.0,
    hidden_act="gelu",
)
DINOV2_PROCESSOR = dict(
    do_resize=True,
    size={"shortest_edge": 256},
    resample=BICUBIC,
    do_center_crop=True,
    crop_size={"height": 224, "width": 224},
    do_normalize=True,
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
)
# llava-hf/llava-1.5-7b-hf
LLAVA_15 = dict(
    vision_feature_layer=-2,
    vision_feature_select_strategy="default",
    projector_hidden_act="gelu",
    image_seq_length=576,
)
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)


def _shrink(config: dict) -> dict:
    return {**config, **{k: v for k, v in TINY.items() if k in config}}


def _images() -> list[Image.Image]:
    """Two photos-sized images of other aspect ratios (the processors resize and crop)."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (480, 333, 3), dtype=np.uint8)),
    ]


def _build(name: str) -> Encoder:
    import transformers as tf

    torch.manual_seed(0)
    if name == "clip-l-336":
        model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**_shrink(CLIP_L_336)))
        processor = tf.CLIPImageProcessorPil(**CLIP_L_336_PROCESSOR)
    elif name == "siglip-so400m-384":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**_shrink(SIGLIP_SO400M_384)))
        processor = tf.SiglipImageProcessorPil(**SIGLIP_PROCESSOR)
    elif name == "dinov2-base":
        model = tf.Dinov2Model(tf.Dinov2Config(**_shrink(DINOV2_BASE)))
        processor = tf.BitImageProcessorPil(**DINOV2_PROCESSOR)
    else:
        config = tf.Dinov2WithRegistersConfig(**_shrink(DINOV2_BASE), num_register_tokens=4)
        model = tf.Dinov2WithRegistersModel(config)
        processor = tf.BitImageProcessorPil(**DINOV2_PROCESSOR)
    return Encoder(model.eval(), processor, name=name)


# name -> (blocks, pixels, tokens per image from the model, tokens --tokens selects from)
GEOMETRY = {
    "clip-l-336": (24, 336, 577, 577),
    "siglip-so400m-384": (27, 384, 729, 729),
    "dinov2-base": (12, 224, 257, 257),
    "dinov2-base-registers": (12, 224, 261, 257),
}
PROCESSORS = {
    "clip-l-336": CLIP_L_336_PROCESSOR,
    "siglip-so400m-384": SIGLIP_PROCESSOR,
    "dinov2-base": DINOV2_PROCESSOR,
    "dinov2-base-registers": DINOV2_PROCESSOR,
}


@pytest.fixture(scope="module")
def built():
    out = {}
    for name in GEOMETRY:
        enc = _build(name)
        pv = enc.preprocess(_images())
        with torch.no_grad():
            ref = enc.model(pixel_values=pv, output_hidden_states=True)
        out[name] = (enc, pv, ref)
    return out


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_processor_settings(built, name):
    enc, pv, _ = built[name]
    n_blocks, px, _, _ = GEOMETRY[name]
    assert tuple(pv.shape) == (2, 3, px, px)
    settings = PROCESSORS[name]
    colour = np.array([10, 128, 250], np.uint8)
    solid = Image.fromarray(np.broadcast_to(colour, (300, 420, 3)).copy())
    got = enc.preprocess([solid])[0]
    for c in range(3):  # a constant image stays constant: rescale then (v - mean) / std
        want = (colour[c] / 255 - settings["image_mean"][c]) / settings["image_std"][c]
        torch.testing.assert_close(got[c], torch.full((px, px), float(want)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_hook_points_and_token_counts(built, name):
    enc, pv, ref = built[name]
    n_blocks, _, n_tokens, n_image_tokens = GEOMETRY[name]
    assert enc.n_layers == n_blocks and len(ref.hidden_states) == n_blocks + 1
    layers = [0, n_blocks // 2, n_blocks - 2, -1]
    captured = enc.capture(pv, layers, post_projection=True)
    for layer in layers:
        block = enc.layer_index(layer)
        assert captured[block].shape == (2, n_tokens, TINY["hidden_size"])
        torch.testing.assert_close(captured[block], ref.hidden_states[block + 1], rtol=0, atol=0)
    embeds = ref.image_embeds if hasattr(ref, "image_embeds") else ref.pooler_output
    torch.testing.assert_close(captured["post_projection"], embeds, rtol=0, atol=0)
    assert enc.image_tokens(captured[0]).shape[1] == n_image_tokens


def test_siglip_has_no_cls_and_pools_with_its_head(built):
    enc, pv, ref = built["siglip-so400m-384"]
    assert not enc.has_cls
    with pytest.raises(ValueError, match="no CLS token"):
        enc.check_tokens(TokenSelection.parse("cls"))
    head = enc.vision.head  # the attention-pooling head (vision_use_head)
    with torch.no_grad():
        pooled = head(ref.last_hidden_state)
    torch.testing.assert_close(enc.embed(pv), pooled, rtol=0, atol=0)
    rows = select_tokens(enc.capture(pv, [-2])[25], TokenSelection.parse("all"), np.arange(2))
    assert rows.acts_RD.shape[0] == 2 * 729 and rows.token_R.max() == 728


@pytest.mark.parametrize("tokens", ["cls", "mean", "all", "random:7"])
def test_dinov2_registers_are_excluded_from_token_selection(built, tokens):
    """With registers the CLS token is followed by 4 registers, then the 256 patches; the
    selection sees CLS + patches in the same positions as DINOv2 without registers."""
    enc, pv, ref = built["dinov2-base-registers"]
    plain, _, _ = built["dinov2-base"]
    assert enc.n_registers == 4 and plain.n_registers == 0 and enc.has_cls
    h_BTD = ref.hidden_states[7]  # block 6
    tokens_BTD = enc.image_tokens(enc.capture(pv, [6])[6])
    torch.testing.assert_close(tokens_BTD, torch.cat([h_BTD[:, :1], h_BTD[:, 5:]], 1))
    selection = TokenSelection.parse(tokens, seed=3)
    got = select_tokens(tokens_BTD, selection, np.arange(2))
    same_geometry = select_tokens(plain.capture(pv, [6])[6], selection, np.arange(2))
    np.testing.assert_array_equal(got.token_R, same_geometry.token_R)
    if tokens == "cls":
        torch.testing.assert_close(got.acts_RD, h_BTD[:, 0], rtol=0, atol=0)


def test_dinov2_registers_through_the_cache(built, tmp_path):
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders.cache import CacheConfig, cache_activations

    enc, _, _ = built["dinov2-base-registers"]
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i, im in enumerate(_images()):
        im.save(tmp_path / "imgs" / "a" / f"{i}.png")
    cfg = CacheConfig(layers=(6,), tokens="all", dtype="float32", workers=0, progress=False)
    cache_activations(enc, tmp_path / "imgs", tmp_path / "out", cfg)
    store = ActivationStore(tmp_path / "out" / "layer_6")
    assert len(store) == 2 * 257  # CLS + 256 patches per image, no registers


def test_early_exit_stops_at_the_deepest_block(built):
    enc, pv, _ = built["clip-l-336"]
    ran: list[int] = []
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        for i, b in enumerate(enc.blocks)
    ]
    try:
        enc.capture(pv, [11])
        assert ran == list(range(12))
        ran.clear()
        enc.capture(pv, [-2])
        assert ran == list(range(23))
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def llava():
    import transformers as tf

    tokenizer = make_tokenizer()
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**_shrink(CLIP_L_336)),
        text_config=tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        **LLAVA_15,
    )
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(config).eval()
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessorPil(**CLIP_L_336_PROCESSOR),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    inputs = processor(images=_images()[:1], text="<image> what is this ?", return_tensors="pt")
    return Encoder(model, processor.image_processor, name="llava-1.5-geometry"), inputs


def _projector_input(enc: Encoder, inputs) -> torch.Tensor:
    """The image features LLaVA's projector receives (what the language model sees)."""
    seen = []
    projector = enc.model.model.multi_modal_projector
    handle = projector.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            enc.model(**inputs)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_llava_reads_block_22_without_cls(llava):
    enc, inputs = llava
    image_token = enc.model.config.image_token_index
    assert int((inputs["input_ids"] == image_token).sum()) == 576
    assert enc.n_layers == 24 and enc.read_layers == (22,)
    seen = _projector_input(enc, inputs)
    assert seen.shape == (1, 576, TINY["hidden_size"])
    cached = enc.capture(inputs["pixel_values"], [-2])
    assert list(cached) == [22]
    torch.testing.assert_close(seen, cached[22][:, 1:], rtol=0, atol=0)  # CLS dropped


def test_llava_steering_at_block_22(llava):
    from vlmsae.steer.steering import steer_sae

    enc, inputs = llava
    base = _projector_input(enc, inputs)
    sae = SAE(SAEConfig(d_in=TINY["hidden_size"], d_sae=128, sparsity="relu", k=None)).eval()
    with torch.no_grad():
        h = enc.capture(inputs["pixel_values"], [22])[22]
        z = sae.encode(h)
        z[..., 5] = 8.0
        want = sae.decode(z)
    with steer_sae(enc, sae, 22, {5: 8.0}):
        steered = _projector_input(enc, inputs)
    assert (steered - base).abs().max() > 1e-2
    torch.testing.assert_close(steered, want[:, 1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reads the vision tower at block 22"):
        steer_sae(enc, sae, 23, {5: 8.0})
    with attach_sae(enc, sae, 23, mode="error", edit=lambda z: z + 5.0):  # never read
        torch.testing.assert_close(_projector_input(enc, inputs), base, rtol=0, atol=0)
    torch.testing.assert_close(_projector_input(enc, inputs), base, rtol=0, atol=0)
