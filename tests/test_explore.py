"""`vlmsae explore` / `vlmsae label` without a browser: the data the site is built from.

The per-neuron statistics are checked against brute-force definitions, the site's JSON
against the scores it was built from (NaN written as null), and mismatched inputs are
refused before anything is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from urllib.parse import unquote

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from explore_fixtures import SIDE, build_tiny_site, make_sae, read_js
from vlmsae.cli import app
from vlmsae.explore.neurons import (
    column_stats,
    decoder_neighbours,
    jaccard_neighbours,
    patch_layout,
)
from vlmsae.explore.site import site_json

N_IMAGES, D, D_SAE = 24, 8, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_site(tmp_path_factory.mktemp("explore"), N_IMAGES, D, D_SAE)


def test_index_holds_the_scores_with_nan_as_null(built):
    index = read_js(built / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    ms = np.load(built / "scores" / "scores.npy")
    col = index["columns"]["ms"]
    assert len(col) == D_SAE == index["meta"]["n_neurons"]
    for got, want in zip(col, ms, strict=True):
        assert (got is None) == bool(np.isnan(want))
        if got is not None:
            assert got == pytest.approx(want, rel=1e-3, abs=1e-6)
    labels = (built / "labels" / "labels.csv").read_text().splitlines()[1:]
    assert index["columns"]["label"] == [(r.split(",")[1].strip('"') or None) for r in labels]
    assert index["columns"]["group"] == [0] * 8 + [1] * 24


def test_shards_match_the_codes_of_the_store(built):
    from vlmsae.data.store import ActivationStore
    from vlmsae.sae import SAE

    sae, store = SAE.load(built / "sae"), ActivationStore(built / "acts")
    with torch.no_grad():
        codes_RS = sae.encode(torch.from_numpy(store.to_numpy())).numpy()
    per_image_NS = codes_RS.reshape(N_IMAGES, 1 + SIDE * SIDE, D_SAE).max(axis=1)
    index = read_js(built / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    records = read_js(built / "site" / "data" / "neurons" / "00000.js", "vlmsaeShard(0, ")
    assert [r["id"] for r in records] == list(range(D_SAE))
    for s, rec in enumerate(records):
        acts = per_image_NS[:, s]
        assert index["columns"]["n_active"][s] == int((acts > 0).sum())
        tops = [v for _, v in rec["top"]]
        want = np.sort(acts[acts > 0])[::-1][:16]
        assert tops == pytest.approx(want, rel=1e-3)
        assert sum(rec["hist"]) == int((acts > 0).sum())
        assert len(rec["heat"]) == len(rec["top"])
        for (img, _), heat in zip(rec["top"], rec["heat"], strict=True):
            src = index["images"][img]
            assert src.startswith("images/") and (built / "site" / src).is_file()
            assert len(heat) == SIDE * SIDE and max(heat) <= 255
        if rec["heat"]:  # the neuron's strongest patch over its top images is 255
            assert max(max(h) for h in rec["heat"]) == 255


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32),
            st.integers(-(2**31), 2**31),
            st.text(max_size=5),
            st.none(),
        ),
        max_size=20,
    )
)
def test_site_json_round_trips_and_writes_nan_as_null(values):
    text = site_json({"a": values, "b": np.array([1.5, np.nan], np.float32)})
    back = json.loads(text)
    assert "NaN" not in text and "Infinity" not in text
    assert back["b"] == [1.5, None]
    for got, want in zip(back["a"], values, strict=True):
        if isinstance(want, float):
            assert got is None if not math.isfinite(want) else got == pytest.approx(want, rel=1e-3)
        else:
            assert got == want


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12), st.integers(1, 9), st.integers(0, 2**16))
def test_neighbours_and_histograms_match_brute_force(n_s, n_img, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_s, 5))
    ids = decoder_neighbours(w, 3).ids
    cos = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1)[:, None]
    ).T
    for s in range(n_s):
        others = sorted((x for x in range(n_s) if x != s), key=lambda x: -cos[s, x])
        assert [i for i in ids[s] if i >= 0] == others[:3] or np.allclose(
            cos[s, [i for i in ids[s] if i >= 0]], cos[s, others[:3]]
        )
    top = rng.integers(0, n_img, size=(n_s, 4))
    valid = rng.random((n_s, 4)) < 0.8
    jac = jaccard_neighbours(top, valid, n_img, n_s)
    sets = [set(top[s][valid[s]].tolist()) for s in range(n_s)]
    for s in range(n_s):
        for j, v in zip(jac.ids[s], jac.values[s], strict=True):
            if j >= 0:
                assert j != s and v == pytest.approx(
                    len(sets[s] & sets[j]) / len(sets[s] | sets[j])
                )
        n_overlap = sum(1 for t in range(n_s) if t != s and sets[s] & sets[t])
        assert (jac.ids[s] >= 0).sum() == min(n_overlap, n_s)
    codes = sp.csr_matrix(np.maximum(rng.normal(size=(n_img, n_s)), 0))
    n_active, max_act, hist = column_stats(codes, 5)
    dense = codes.toarray()
    assert (n_active == (dense > 0).sum(0)).all() and (hist.sum(1) == n_active).all()
    assert np.allclose(max_act, dense.max(0))


def test_patch_layout():
    assert patch_layout(1 + 16) == (1, 4) and patch_layout(256) == (0, 16)
    assert patch_layout(1 + 576) == (1, 24) and patch_layout(7) is None


def test_explore_refuses_scores_of_another_sae(built, tmp_path):
    make_sae(tmp_path / "big", D, 2 * D_SAE)
    args = ["explore", "--sae", tmp_path / "big", "--activations", built / "acts", "--out",
            tmp_path / "site", "--scores", built / "scores"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
    assert f"scores {D_SAE} neurons but the SAE has {2 * D_SAE}" in result.output
    assert not (tmp_path / "site" / "index.html").exists()


def test_explore_refuses_a_store_of_another_width(built, tmp_path):
    make_sae(tmp_path / "wide", D + 1, D_SAE)
    args = ["explore", "--sae", tmp_path / "wide", "--activations", built / "acts",
            "--out", tmp_path / "site"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
    assert f"has width {D} but the SAE reads {D + 1}" in result.output


def test_label_refuses_an_unknown_vocabulary(built, tmp_path):
    args = ["label", "--sae", built / "sae", "--activations", built / "acts", "--out",
            tmp_path / "l", "--clip", "toyworld", "--vocab", tmp_path / "none.txt"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
    assert "no such file" in result.output


def test_labels_pick_the_closest_prompt():
    from vlmsae.explore.labels import assign_labels

    img = np.eye(3)  # image i points along axis i
    text = np.eye(3)[[2, 0, 1]]  # word 0 = axis 2, word 1 = axis 0, word 2 = axis 1
    top = np.array([[0, 1], [2, -1], [-1, -1]])
    weight = np.array([[3.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    res = assign_labels(top, weight, img, text, ["w0", "w1", "w2"])
    assert res.label == ["w1", "w0", None]
    assert res.margin[0] == pytest.approx((3 - 1) / math.sqrt(10)) and np.isnan(res.margin[2])


def test_labels_csv_is_safe_in_a_spreadsheet_and_reads_back_exactly(tmp_path):
    """A vocabulary line is user text: a label that a spreadsheet would run as a formula is
    written with a leading ' and read back as it was; a label that is a plain number ("+1")
    is no formula and stays as it is."""
    import csv

    from vlmsae.explore.labels import NeuronLabels, write_labels_csv
    from vlmsae.explore.site import read_labels

    words = ['=HYPERLINK("http://x","y")', "+1+1", "-cmd", "@SUM(A1)", "'quoted", 'a "b", c']
    words += ["+1", None]
    n = len(words)
    labels = NeuronLabels(words, np.linspace(0, 1, n), np.linspace(1, 2, n))
    write_labels_csv(tmp_path / "labels.csv", labels)
    with open(tmp_path / "labels.csv", newline="") as f:
        cells = [row["label"] for row in csv.DictReader(f)]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells if c != "+1")
    assert cells[:5] == ["'" + w for w in words[:5]] and cells[5:7] == ['a "b", c', "+1"]
    got, margins = read_labels(tmp_path / "labels.csv", n)
    assert got == words and np.allclose(margins[:-1], labels.margin[:-1], atol=1e-6)
    assert np.isnan(margins[-1])  # an unlabelled neuron has no margin


def test_model_heatmaps_equal_the_stored_tokens(tmp_path):
    """Heatmaps recomputed with the model for the top images (a CLS store) equal those read
    from a store of every token of the same images."""
    from explore_fixtures import make_images
    from tiny_models import WIDTH, clip_processor, make_clip
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders import Encoder
    from vlmsae.encoders.cache import CacheConfig, cache_activations
    from vlmsae.explore.neurons import compute_neuron_data, model_heatmaps

    make_images(tmp_path / "imgs", 12)
    encoder = Encoder(make_clip(2), clip_processor())
    for tokens in ("all", "cls"):
        cfg = CacheConfig(layers=(1,), tokens=tokens, dtype="float32", workers=0, progress=False)
        cache_activations(encoder, tmp_path / "imgs", tmp_path / tokens, cfg)
    sae = make_sae(tmp_path / "sae", WIDTH, 24)
    all_store = ActivationStore(tmp_path / "all" / "layer_1")
    data, _ = compute_neuron_data(sae, all_store, top_k=4)
    assert data.heatmaps is not None and data.heatmaps.source == "store"
    assert data.heatmaps.side == 4 and data.heatmaps.values.max() > 0
    top = np.where(data.top_values > 0, data.top_indices, -1)
    cls_store = ActivationStore(tmp_path / "cls" / "layer_1")
    recomputed = model_heatmaps(sae, encoder, 1, cls_store.images, top)
    np.testing.assert_allclose(recomputed.values, data.heatmaps.values, rtol=2e-3, atol=1e-3)
    cls_data, _ = compute_neuron_data(sae, cls_store, top_k=4, encoder=encoder)
    assert cls_data.heatmaps is not None and cls_data.heatmaps.source == "model"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """48 toy-world images cached with every token of the toy CLIP's block 2, a random SAE."""
    from vlmsae.encoders.cache import CacheConfig, cache_activations
    from vlmsae.toyworld import clip_path, export_imagefolder

    root = tmp_path_factory.mktemp("toy")
    export_imagefolder(root / "world", split="test", n=48)
    cfg = CacheConfig(layers=(2,), tokens="all", dtype="float32", workers=0, progress=False)
    cache_activations(clip_path(), root / "world", root / "acts", cfg, split="test")
    from vlmsae.data.store import ActivationStore

    make_sae(root / "sae", ActivationStore(root / "acts" / "layer_2").d, 64, k=8)
    return root


def test_toy_world_site_shows_the_truth_and_labels_are_scored(toy):
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.build import build_site
    from vlmsae.explore.labels import label_sae
    from vlmsae.explore.truth import toy_labels
    from vlmsae.toyworld import ATTRIBUTES, clip_path, read_exported

    summary = label_sae(toy / "sae", toy / "acts" / "layer_2", toy / "labels",
                        clip="toyworld", vocab="toyworld")  # fmt: skip
    t = summary["toyworld"]
    assert t["n_correct"] <= t["n_monosemantic"] <= 64
    build_site(toy / "sae", toy / "acts" / "layer_2", toy / "site",
               labels=toy / "labels" / "labels.csv")  # fmt: skip
    index = read_js(toy / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    cols = index["columns"]
    assert {"concept", "purity", "depth", "label"} <= set(cols)
    vision = json.loads((clip_path() / "config.json").read_text())["vision_config"]
    assert index["meta"]["heat_side"] == vision["image_size"] // vision["patch_size"]
    store = ActivationStore(toy / "acts" / "layer_2")
    truth = toy_labels(store)
    records = {str(im.path): im.record for im in read_exported(toy / "world" / "test")}
    shapes = ATTRIBUTES["shape"]
    assert [shapes[i] for i in truth["shape"]] == [records[p].shape for p in store.images]
    shard = read_js(toy / "site" / "data" / "neurons" / "00000.js", "vlmsaeShard(0, ")
    n_checked = 0
    for rec in shard:  # a concept is a value >= 80 % of the neuron's top images hold
        concept = cols["concept"][rec["id"]]
        if not concept:
            continue
        paths = [str((toy / "site" / unquote(index["images"][i])).resolve()) for i, _ in rec["top"]]
        held = [set(asdict(records[p]).values()) for p in paths]
        for word in concept.split():
            assert sum(word in h for h in held) >= 0.8 * len(held), (rec["id"], word)
        n_checked += 1
    assert n_checked > 0
    assert all(d is None or 0 <= d <= 3 for d in cols["depth"])


def test_a_code_store_gives_the_same_neurons_as_its_activations(built, tmp_path):
    from vlmsae.data.store import ActivationStore, StoreWriter
    from vlmsae.explore.neurons import compute_neuron_data, encode_rows
    from vlmsae.sae import SAE

    sae, acts = SAE.load(built / "sae"), ActivationStore(built / "acts")
    writer = StoreWriter(
        tmp_path / "codes",
        D_SAE,
        kind="codes",
        dtype="float32",
        meta={k: acts.manifest[k] for k in ("model", "hookpoint", "layer")},
    )
    writer.add(encode_rows(sae, acts), acts.rows[:, 0], acts.rows[:, 1])  # fmt: skip
    writer.mark(N_IMAGES)
    codes = writer.close(images=acts.images, n_images=N_IMAGES)
    from_acts, _ = compute_neuron_data(sae, acts)
    from_codes, _ = compute_neuron_data(sae, codes)
    np.testing.assert_array_equal(from_codes.top_indices, from_acts.top_indices)
    np.testing.assert_allclose(from_codes.top_values, from_acts.top_values)
    np.testing.assert_allclose(from_codes.heatmaps.values, from_acts.heatmaps.values)


def test_raw_neurons_site_lists_the_store_dimensions(built, tmp_path):
    from vlmsae.data.store import ActivationStore

    args = ["explore", "--raw", "--activations", built / "acts", "--out", tmp_path / "raw",
            "--embeddings", built / "emb"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    index = read_js(tmp_path / "raw" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    records = read_js(tmp_path / "raw" / "data" / "neurons" / "00000.js", "vlmsaeShard(0, ")
    assert index["meta"]["n_neurons"] == D and index["meta"]["arch"] == "raw neurons"
    acts = ActivationStore(built / "acts").to_numpy()
    per_image_ND = acts.reshape(N_IMAGES, 1 + SIDE * SIDE, D).max(axis=1)
    for d, rec in enumerate(records):
        col = per_image_ND[:, d]
        want = np.sort(col[col > 0])[::-1][:16]
        assert [v for _, v in rec["top"]] == pytest.approx(want, rel=1e-3)
        assert rec["near_decoder"] == [] and index["columns"]["n_active"][d] == (col > 0).sum()
    assert len(index["columns"]["ms"]) == D


def test_toy_accuracy_counts_labels_whose_every_word_is_a_shared_concept():
    from dataclasses import replace

    from vlmsae.explore.labels import NeuronLabels, toy_accuracy
    from vlmsae.explore.truth import truth_from_records
    from vlmsae.toyworld import iter_world
    from vlmsae.toyworld.shapes import FAMILY_OF

    star = dict(family=FAMILY_OF["star"], shape="star", color="red")
    records = [replace(r, **star) for r in iter_world("test", 10)]
    records[9] = replace(records[9], color="blue")  # images 0-8 red, image 9 blue
    truth = truth_from_records("shapes", records)
    top = np.array([np.arange(10), np.arange(10), np.arange(10), np.r_[np.arange(5), [-1] * 5]])
    labels = NeuronLabels(["red", "red star", "blue", None], np.zeros(4), np.zeros(4))
    res = toy_accuracy(labels, top, truth, np.array([0.9, 0.85, 0.95, 0.99]))
    assert (res["n_monosemantic"], res["n_correct"]) == (4, 2)
    assert res["accuracy"] == 0.5 and res["accuracy_all_labelled"] == pytest.approx(2 / 3)
    assert (res["n_correct_all_labelled"], res["n_labelled"]) == (2, 3)
    low = toy_accuracy(labels, top, truth, np.array([0.9, 0.1, 0.1, 0.1]))  # 1 high-MS neuron
    from vlmsae.explore.labels import label_accuracy_text

    assert label_accuracy_text(low) == (
        "labels name a true concept of 1 of 1 (100%) neurons with oracle MS >= 0.8 and of "
        "2 of 3 (67%) labelled neurons"
    )


def test_every_ms_column_is_the_ms_under_its_named_embedder(built):
    """The site's MS columns: ``ms`` from `vlmsae score` (its embedder from the score
    summary), ``ms_second`` computed under ``--embeddings second=emb2``; each equals MS
    computed directly under that store, and the score summary names its embedder."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.neurons import encode_rows, per_image
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.ms import monosemanticity
    from vlmsae.sae import SAE

    index = read_js(built / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    meta = index["meta"]
    assert json.loads((built / "scores" / "summary.json").read_text())["embedder"] == "emb"
    names = [(m["column"], m["embedder"]) for m in meta["ms"]]
    assert names == [("ms", "emb"), ("ms_second", "second")]
    store = ActivationStore(built / "acts")
    codes = per_image(encode_rows(SAE.load(built / "sae"), store), image_index_of(store))
    for column, emb in (("ms", "emb"), ("ms_second", "emb2")):
        want = monosemanticity(codes, ActivationStore(built / emb)).ms
        got = np.array([np.nan if v is None else v for v in index["columns"][column]])
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6)
    assert not np.allclose(np.nan_to_num(index["columns"]["ms"], nan=0.0),
                           np.nan_to_num(index["columns"]["ms_second"], nan=0.0))  # fmt: skip


def test_score_names_the_embedder(built, tmp_path):
    args = ["score", "--activations", built / "acts", "--embeddings", built / "emb2",
            "--sae", built / "sae", "--out", tmp_path / "s"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "MS under the emb2 embedding over 24 images" in result.output


def test_probe_ranks_only_neurons_active_on_min_active_images():
    from vlmsae.core.errors import UserError
    from vlmsae.explore.probe import ProbeConfig, probe_neurons

    cols = {"ms": np.array([1.0, 0.99, 0.6, 0.7, 0.5]), "max_act": np.ones(5),
            "n_active": np.array([2, 3, 40, 16, 15])}  # fmt: skip
    assert probe_neurons(cols, 5, ProbeConfig(n_neurons=2), min_active=16) == [3, 2]
    assert probe_neurons(cols, 5, ProbeConfig(n_neurons=2), min_active=1) == [0, 1]
    with pytest.raises(UserError, match="active on >= 41 images"):
        probe_neurons(cols, 5, ProbeConfig(), min_active=41)


def test_a_grid_names_the_embedder_of_its_ms(built, tmp_path):
    """`vlmsae grid --scores` titles each panel with MS and the embedder `vlmsae score`
    recorded (the SVG beside the PNG keeps the text with svg.fonttype none)."""
    import matplotlib

    args = ["top-images", built / "acts", "--sae", built / "sae", "--out", tmp_path / "top"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    grid = ["grid", tmp_path / "top", "--images", built / "acts", "--out", tmp_path / "g.png",
            "--scores", built / "scores" / "scores.npy", "--top-n", "2",
            "--min-active", "1"]  # fmt: skip
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        result = CliRunner().invoke(app, [str(a) for a in grid])
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "g.svg").read_text()
    assert svg.count("MS (emb) ") == 2, svg[:500]
