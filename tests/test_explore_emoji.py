"""The explorer and the labels on the emoji world: the truth is read from the exported
split's world.json (341 emoji, Unicode's group -> subgroup -> emoji, two emoji per scene),
never from the shapes world. Models: the shipped emoji models, else tiny random ones."""

from __future__ import annotations

import json
from dataclasses import replace
from urllib.parse import unquote

import numpy as np
import pytest
from typer.testing import CliRunner

from emoji_models import emoji_models
from explore_fixtures import build_emoji_site, read_js
from vlmsae.cli import app
from vlmsae.explore.truth import CONCEPT_SHARE, dominant_concepts, toy_truth, truth_from_records
from vlmsae.toyworld.worlds import get_world

EMOJI = get_world("emoji")


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    models = emoji_models(tmp_path_factory)
    return build_emoji_site(tmp_path_factory.mktemp("emoji-site"), models), models


def _records(n: int):
    return list(EMOJI.iter_world("test", n))


def test_a_neuron_on_the_second_emoji_is_named_by_it_without_its_group():
    """9 of 10 top images show a dog face as the *second* emoji: the concept is "dog"
    (the emoji's group and subgroup are implied, so left out), and the truth knows it."""
    recs = [r for r in _records(60) if "dog" not in r.present][:10]
    recs = [replace(r, second="dog") for r in recs[:9]] + [replace(recs[9], second="none")]
    truth = truth_from_records("emoji", recs)
    top = np.arange(10)[None]
    concepts = dominant_concepts(top, truth)
    assert concepts.name[0] is not None and "dog" in concepts.name[0].split()
    assert not {"animals", "animal-mammal"} & set(concepts.name[0].split())
    assert concepts.purity[0] >= 0.9
    words = EMOJI.attributes["emoji"]
    assert truth.labels["emoji"].tolist() == [words.index(r.emoji) for r in recs]


def test_the_parent_of_a_named_emoji_is_dropped_but_another_group_stays():
    """Every top image shows a dog (second) and a food emoji (main): "dog" and "food"
    are named; "animals" (the dog's group) is not."""
    foods = [r for r in _records(3000) if r.group == "food" and "dog" not in r.present]
    recs = [replace(r, second="dog") for r in foods[:10]]
    words = dominant_concepts(np.arange(10)[None], truth_from_records("emoji", recs)).name[0]
    assert "dog" in words.split() and "food" in words.split() and "animals" not in words


def test_labels_use_the_emoji_vocabulary_of_the_split(emoji):
    root, _ = emoji
    summary = json.loads((root / "labels" / "summary.json").read_text())
    attrs = EMOJI.attributes
    assert summary["world"] == "emoji"
    assert summary["n_words"] == sum(len(attrs[a]) for a in EMOJI.concept_prompts())
    t = summary["toyworld"]
    assert t["n_correct"] <= t["n_monosemantic"] <= 64


def test_the_site_shows_emoji_concepts_held_by_the_top_images(emoji):
    from vlmsae.data.store import ActivationStore
    from vlmsae.toyworld import read_exported

    root, _ = emoji
    site = root / "site"
    index = read_js(site / "data" / "index.js", "window.VLMSAE_INDEX = ")
    cols = index["columns"]
    assert {"concept", "purity", "depth", "label"} <= set(cols)
    assert all(d is None or 0 <= d <= 3 for d in cols["depth"])
    records = {str(im.path): im.record for im in read_exported(root / "world" / "test")}
    store = ActivationStore(root / "acts" / "layer_1")
    truth = toy_truth(store)
    assert truth.world.name == "emoji"
    assert [truth.records[i].emoji for i in range(len(store.images))] == [
        records[p].emoji for p in store.images
    ]
    shard = read_js(site / "data" / "neurons" / "00000.js", "vlmsaeShard(0, ")
    n_checked = 0
    for rec in shard:  # recomputed from the top images' records with world.concepts
        if not rec["top"]:
            continue
        paths = [str((site / unquote(index["images"][i])).resolve()) for i, _ in rec["top"]]
        held = [EMOJI.concepts(records[p]) for p in paths]
        share = {
            (a, v): np.mean([v in h[a] for h in held])
            for a in EMOJI.oracle_attributes
            for v in {v for h in held for v in h[a]}
        }
        assert cols["purity"][rec["id"]] == pytest.approx(max(share.values()), abs=1e-3)
        strong = {av for av, sh in share.items() if sh >= CONCEPT_SHARE}
        words = set((cols["concept"][rec["id"]] or "").split())
        assert words <= {v for _, v in strong}, (rec["id"], words, strong)
        for a, v in strong - {(a, w) for a, w in strong if w in words}:
            assert a in ("group", "subgroup"), (rec["id"], a, v)  # only parents are left out
        n_checked += 1
    assert n_checked > 0
    # the page carries per-neuron strings only, no per-value table of the 341 emoji
    assert (site / "data" / "index.js").stat().st_size < 200_000


def test_an_unknown_toy_world_vocabulary_is_one_error_line(emoji):
    root, _ = emoji
    args = ["label", "--sae", root / "sae", "--activations", root / "acts" / "layer_1",
            "--out", root / "bad", "--vocab", "toyworld:nope", "--clip", root / "x"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "unknown toy world 'nope'" in result.output, result.output
