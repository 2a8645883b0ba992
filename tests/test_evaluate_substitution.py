"""Substitution (the model with the SAE spliced in) on every supported family.

An identity SAE (ReLU codes of ``[x, -x]``, decoder ``[I; -I]``: exact reconstruction)
recovers 1.0 of every metric an ablation changes; a zero SAE (decoder 0) is the zero ablation
and recovers 0.0 against it; reconstruction + error gives back the original outputs. Models
are tiny HF models built from configs (one per family, built once per module) and the toy
world's shipped CLIP and LLaVA, which also run the path-loading entry point.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tiny_models import (
    clip_processor,
    dinov2_processor,
    make_clip,
    make_dinov2,
    make_llava,
    make_siglip,
    siglip_processor,
    vision_kwargs,
)
from vlmsae.core.errors import UserError
from vlmsae.data.images import load_dataset
from vlmsae.encoders import Encoder
from vlmsae.encoders.tokens import TokenSelection
from vlmsae.evaluate.substitution import (
    SubstitutionResult,
    evaluate_substitution,
    fraction_recovered,
    plot_recovered,
    run_substitution,
)
from vlmsae.evaluate.substitution_hooks import substitute_block
from vlmsae.sae import SAE, SAEConfig
from vlmsae.steer.llava import wrap_llava

TOL = 1e-6


def make_sae(d: int, *, zero: bool = False, **source) -> SAE:
    """Identity SAE (``zero``: decoder 0, so every reconstruction is 0) at ``source``."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, sparsity="relu", **source))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.zeros(2 * d, d) if zero else torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def _dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(**vision_kwargs(), num_register_tokens=2)
    return Dinov2WithRegistersModel(config).eval()


@pytest.fixture(scope="module")
def models():
    """One tiny model per family."""
    llava_model, llava_processor = make_llava()
    return {
        "clip": Encoder(make_clip(), clip_processor()),
        "siglip": Encoder(make_siglip(), siglip_processor()),
        "dinov2": Encoder(make_dinov2(), dinov2_processor()),
        "dinov2_registers": Encoder(_dinov2_registers(), dinov2_processor()),
        "llava": wrap_llava(llava_model, llava_processor, "tiny-llava"),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of noise images, reddish and bluish (k-NN can tell them apart)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("blue", "red")):
        (root / name).mkdir()
        for i in range(6):
            px = rng.integers(0, 120, (40, 48, 3), dtype=np.uint8)
            px[..., 2 * (1 - c)] += 120  # red (channel 0) or blue (channel 2)
            Image.fromarray(px, "RGB").save(root / name / f"{i}.png")
    return root


CASES = [
    ("clip", 1, "cls"),
    ("clip", 2, "mean"),
    ("clip", 1, "all"),
    ("clip", 2, "random:4"),
    ("clip", None, None),  # post_projection
    ("siglip", 1, "mean"),
    ("siglip", 2, "all"),
    ("siglip", None, None),
    ("dinov2", 1, "cls"),
    ("dinov2", 2, "all"),
    ("dinov2_registers", 1, "cls"),
    ("dinov2_registers", 2, "mean"),
    ("llava", 1, "all"),
    ("llava", 0, "cls"),
]


def _source(layer, tokens) -> dict:
    if layer is None:
        return {"hookpoint": "post_projection"}
    return {"hookpoint": "post_mlp_residual", "layer": layer, "tokens": tokens}


def _width(model, layer) -> int:
    enc = model.encoder if hasattr(model, "encoder") else model
    return enc.d_model if layer is not None else enc.d_embed


def _run(model, folder, sae, **kw) -> SubstitutionResult:
    return run_substitution(sae, model, load_dataset(folder), batch_size=5, k_nn=3, **kw)


def _check_identity(result: SubstitutionResult) -> None:
    scale = max(1.0, result.identity_max_abs_output)
    assert result.identity_max_abs_error <= 1e-5 * scale, result.identity_max_abs_error
    first = next(iter(result.values))  # cosine / KL: every ablation changes it
    for ablation in ("zero", "mean"):
        assert not math.isnan(result.recovered[first][ablation]), result.undefined
    for metric, row in result.recovered.items():
        assert result.values[metric]["sae"] == pytest.approx(result.values[metric]["original"])
        for ablation, frac in row.items():
            if math.isnan(frac):
                assert f"{metric}/recovered/{ablation}" in result.undefined
            else:
                assert frac == pytest.approx(1.0, abs=TOL), (metric, ablation)


@pytest.mark.parametrize(("family", "layer", "tokens"), CASES, ids=lambda x: str(x))
def test_identity_sae_recovers_everything_and_zero_sae_nothing(
    models, folder, family, layer, tokens
):
    model = models[family]
    d = _width(model, layer)
    result = _run(model, folder, make_sae(d, **_source(layer, tokens)))
    _check_identity(result)
    assert result.n_images == 12 and result.n_skipped == 0
    zero = _run(model, folder, make_sae(d, zero=True, **_source(layer, tokens)))
    first = next(iter(zero.values))
    assert zero.recovered[first]["zero"] == pytest.approx(0.0, abs=TOL)
    for metric, row in zero.values.items():
        assert row["sae"] == pytest.approx(row["zero"], abs=1e-9), metric
        frac = zero.recovered[metric]["zero"]
        assert math.isnan(frac) or frac == pytest.approx(0.0, abs=TOL)
    # the zero SAE does change the model (the identity SAE above did not)
    assert zero.values[first]["sae"] != pytest.approx(zero.values[first]["original"])
    json.dumps(zero.to_dict(), allow_nan=False)


def test_metrics_per_family(models, folder):
    enc = _run(models["dinov2"], folder, make_sae(32, **_source(1, "all")))
    assert set(enc.values) == {"cosine", "knn_accuracy"}
    assert "zero_shot_accuracy" in enc.not_measured
    assert enc.values["knn_accuracy"]["original"] == pytest.approx(1.0)  # red vs blue
    llava = _run(models["llava"], folder, make_sae(32, **_source(1, "all")))
    assert set(llava.values) == {"kl_divergence", "answer_agreement"}
    assert llava.values["kl_divergence"]["original"] == 0.0
    assert llava.values["answer_agreement"]["original"] == 1.0
    assert llava.prompt


def test_cls_where_llava_drops_it_is_undefined_with_a_reason(models, folder):
    """LLaVA reads block 2 without its CLS token: a CLS substitution there changes nothing."""
    result = _run(models["llava"], folder, make_sae(32, **_source(2, "cls")))
    for metric in result.values:
        assert math.isnan(result.recovered[metric]["zero"])
        assert "nothing to recover" in result.undefined[f"{metric}/recovered/zero"]
    d = result.to_dict()
    assert d["fraction_recovered"]["kl_divergence"]["zero"] is None
    json.dumps(d, allow_nan=False)


def _noisy_sae(d: int, **source) -> SAE:
    sae = make_sae(d, **source)
    with torch.no_grad():
        sae.W_dec.mul_(0.7)
    return sae


def test_partial_sae_lies_between_and_summary_and_plot(models, folder, tmp_path):
    result = _run(models["clip"], folder, _noisy_sae(32, **_source(1, "all")))
    rec = result.recovered["cosine"]["zero"]
    assert 0 < rec < 1
    # reconstruction + error is not bit-exact x here (0.7 x + 0.3 x): float rounding only
    assert result.identity_max_abs_error <= 1e-5 * max(1.0, result.identity_max_abs_output)
    lines = result.summary_lines()
    assert any(line.startswith("cosine") for line in lines) and len(lines) < 40
    path = plot_recovered(result, tmp_path / "recovered.png")
    assert path.stat().st_size > 1000


def test_substitution_semantics_per_token_selection():
    """cls changes token 0 only; all changes every image token but the registers; mean
    shifts every image token so that their mean becomes the new row."""
    h = torch.randn(3, 7, 32)
    sae = _noisy_sae(32)
    cls = substitute_block(h, TokenSelection.parse("cls"), 2, "sae", sae, None)
    assert torch.equal(cls[:, 1:], h[:, 1:]) and not torch.equal(cls[:, 0], h[:, 0])
    every = substitute_block(h, TokenSelection.parse("all"), 2, "sae", sae, None)
    assert torch.equal(every[:, 1:3], h[:, 1:3])  # registers kept
    torch.testing.assert_close(every[:, 3:], 0.7 * h[:, 3:])
    mean_D = torch.randn(32)
    shifted = substitute_block(h, TokenSelection.parse("mean"), 2, "mean", sae, mean_D)
    pos = [0, 3, 4, 5, 6]
    torch.testing.assert_close(shifted[:, pos].mean(1), mean_D.expand(3, -1))
    dev = shifted[:, pos] - shifted[:, pos].mean(1, keepdim=True)
    torch.testing.assert_close(dev, h[:, pos] - h[:, pos].mean(1, keepdim=True))
    assert torch.equal(shifted[:, 1:3], h[:, 1:3])


@pytest.mark.parametrize(
    ("family", "layer", "tokens"),
    [c for c in CASES if c[0] != "llava" and c[1] is not None],
    ids=lambda x: str(x),
)
def test_replaying_the_blocks_before_the_hook_changes_nothing(
    models, folder, family, layer, tokens
):
    """Variants after the original reuse its output of blocks 0..layer: the embeddings are
    those of full forwards, and the blocks before the hook are back to normal afterwards."""
    from vlmsae.evaluate.substitution_encoder import encoder_outputs
    from vlmsae.evaluate.substitution_run import _rank_batches

    enc = models[family]
    batches = _rank_batches(load_dataset(folder).paths, enc.processor, 5, 0)
    sae, selection = _noisy_sae(32), TokenSelection.parse(tokens)
    calls = []  # forwards of a module inside block 0: fewer when the prefix is replayed
    inner = next(iter(enc.blocks[0].children()))
    handle = inner.register_forward_hook(lambda *_: calls.append(1))
    try:
        fast = encoder_outputs(sae, enc, batches, layer, selection, replay=True)
        n_fast = len(calls)
        full = encoder_outputs(sae, enc, batches, layer, selection, replay=False)
    finally:
        handle.remove()
    # 3 batches of 5, 5, 2 images: the mean pass, then 1 forward (replay) or 5 through block 0
    assert (n_fast, len(calls) - n_fast) == (2 * 3, 6 * 3)
    for v, emb in full.out_VN.items():
        torch.testing.assert_close(fast.out_VN[v], emb, rtol=1e-5, atol=1e-6, msg=v)
    assert not torch.equal(full.out_VN["sae"], full.out_VN["original"])
    assert all("forward" not in block.__dict__ for block in enc.blocks)


def test_fraction_recovered():
    assert fraction_recovered(1.0, 0.75, 0.5) == 0.5
    assert fraction_recovered(0.0, 0.1, 0.4) == pytest.approx(0.75)  # KL: lower is better
    assert math.isnan(fraction_recovered(0.8, 0.8, 0.8))
    assert math.isnan(fraction_recovered(float("nan"), 0.8, 0.1))


def test_sae_that_does_not_fit_is_a_user_error(models, folder):
    with pytest.raises(UserError, match="no CLS"):
        _run(models["siglip"], folder, make_sae(32, **_source(1, "cls")))
    with pytest.raises(UserError, match="never read"):
        _run(models["llava"], folder, make_sae(32, **_source(3, "all")))
    with pytest.raises(UserError, match="post_projection"):
        _run(models["llava"], folder, make_sae(32, hookpoint="post_projection"))
    with pytest.raises(UserError, match="wide"):
        _run(models["clip"], folder, make_sae(16, **_source(1, "all")))
    with pytest.raises(UserError, match="hook point"):
        _run(models["clip"], folder, SAE(SAEConfig(d_in=32, d_sae=64, sparsity="relu")))
    with pytest.raises(UserError, match="labels"):
        _run(models["clip"], folder, make_sae(32, **_source(1, "all")), labels=[0, 1])


@pytest.mark.parametrize("layer", [1, None])
def test_no_readable_image_is_a_user_error(models, tmp_path, layer):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_text("not an image")
    with pytest.raises(UserError, match="none of the images"):
        _run(
            models["clip"],
            tmp_path,
            make_sae(_width(models["clip"], layer), **_source(layer, "all")),
        )


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    from vlmsae import toyworld

    return toyworld.export_imagefolder(tmp_path_factory.mktemp("toy"), split="test", n=24)


def test_toy_clip_through_the_path_entry_point(toy_folder):
    """The shipped toy CLIP loads by path, with its tokenizer: zero-shot accuracy of the
    colour named by each class folder (``NNNNN_family_shape_color``)."""
    from vlmsae import toyworld

    dataset = load_dataset(toy_folder)
    color_of_class = [c.split("_")[-1] for c in dataset.classes]
    colors = sorted(set(color_of_class))
    labels = [colors.index(color_of_class[label]) for label in dataset.labels]
    sae = make_sae(128, **_source(2, "all"))
    result = evaluate_substitution(
        sae, toyworld.clip_path(), toy_folder, labels=labels, class_names=colors,
        prompt="a {} object", k_nn=3,
    )  # fmt: skip
    assert "zero_shot_accuracy" in result.values
    assert result.values["zero_shot_accuracy"]["original"] > 0.5
    _check_identity(result)
    assert not math.isnan(result.recovered["zero_shot_accuracy"]["zero"])
    with pytest.raises(UserError, match="no '\\{\\}'"):
        evaluate_substitution(sae, toyworld.clip_path(), toy_folder, prompt="a shape", limit=4)


def test_toy_llava_through_the_path_entry_point(toy_folder):
    from vlmsae import toyworld
    from vlmsae.toyworld.shapes import QUESTION_SHAPE

    sae = make_sae(128, **_source(2, "all"))
    result = evaluate_substitution(
        sae, toyworld.llava_path(), toy_folder, prompt=QUESTION_SHAPE, limit=12, batch_size=6
    )
    assert result.n_images == 12 and result.prompt == QUESTION_SHAPE
    _check_identity(result)
    zero = evaluate_substitution(
        make_sae(128, zero=True, **_source(2, "all")),
        toyworld.llava_path(),
        toy_folder,
        prompt=QUESTION_SHAPE,
        limit=12,
        batch_size=6,
    )
    assert zero.recovered["kl_divergence"]["zero"] == pytest.approx(0.0, abs=TOL)
    assert zero.values["kl_divergence"]["sae"] > 0.01


def _rank_result(folder: str, out: str | None, family: str) -> dict:
    """Substitution of a tiny model (built alike on every rank) over ``folder``."""
    from vlmsae.core import dist

    dist.init_from_env()
    if family == "llava":
        model = wrap_llava(*make_llava(), "tiny-llava")
    else:
        model = Encoder(make_clip(), clip_processor())
    sae = _noisy_sae(32, **_source(1, "all"))
    result = _run(model, folder, sae).to_dict()
    if out is not None:
        with open(f"{out}/rank{dist.rank()}.json", "w") as f:
            json.dump(result, f)
    return result


@pytest.mark.parametrize("family", ["clip", "llava"])
def test_two_ranks_give_the_one_process_result(folder, tmp_path, family):
    """Each rank substitutes its share of the images (one unreadable); every rank returns the
    whole dataset's numbers, equal to one process's (k-NN gathers every rank's embeddings)."""
    import shutil

    from ranks import run_ranks

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "red" / "broken.png").write_text("not an image")
    run_ranks(_rank_result, 2, str(data), str(tmp_path), family, timeout=300)
    one = _rank_result(str(data), None, family)
    assert one["n_images"] == 12 and one["n_skipped"] == 1
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in ("n_images", "n_skipped", "undefined"):
            assert got[key] == one[key], key
        for section in ("metrics", "fraction_recovered"):
            for metric, row in one[section].items():
                for col, want in row.items():
                    # a rank's batches differ from one process's: float rounding differs
                    assert got[section][metric][col] == pytest.approx(want, rel=1e-5, abs=1e-7)
