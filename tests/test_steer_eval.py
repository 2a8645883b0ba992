"""Pure parts of steering evaluation: judges, verdicts, rates, α choice, neuron choice,
DiffMean directions, table files. No model needed."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmsae.steer.diffmean import diffmean_direction, directions_from_labels
from vlmsae.steer.evaluate import Item, Probe, Rates, Verdict, choose_alpha, judge_item, rates
from vlmsae.steer.judges import ClipJudge, WordJudge
from vlmsae.steer.neurons import choose_concept_neurons, top_image_purity
from vlmsae.steer.table import SteeringTable, TableRow, table_markdown, write_steering_table

SHAPES = ("circle", "star", "square")
COLORS = ("red", "blue")
CANDIDATES = {"shape": SHAPES, "color": COLORS}
PROBES = [Probe("shape?", "shape", one_word=True), Probe("color?", "color", one_word=True)]


def test_word_judge():
    j = WordJudge()
    assert j.name_value("Star", SHAPES, one_word=True) == "star"
    assert j.name_value("star.", SHAPES, one_word=True) == "star"
    assert j.name_value("a star", SHAPES, one_word=True) is None  # breaks the one-word template
    assert j.name_value("a star", SHAPES, one_word=False) == "star"
    assert j.name_value("star or circle", SHAPES, one_word=False) is None  # ambiguous
    assert j.name_value("stars", SHAPES, one_word=True) is None
    assert (
        j.name_value("a traffic light", ("traffic light", "car"), one_word=False) == "traffic light"
    )
    assert j.name_value("", SHAPES, one_word=False) is None


def test_clip_judge_picks_nearest_prompt():
    table = {"a photo of a star": [1, 0], "a photo of a circle": [0, 1], "starry": [0.9, 0.1]}
    table["roundish"] = [0.2, 0.98]

    def embed(texts):
        v = np.array([table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    j = ClipJudge(embed)
    assert j.name_value("starry", ("star", "circle"), one_word=True) == "star"
    assert j.name_value("roundish", ("star", "circle"), one_word=True) == "circle"
    assert j.name_value("", ("star", "circle"), one_word=True) is None
    assert (
        ClipJudge(embed, margin=0.9).name_value("starry", ("star", "circle"), one_word=True) is None
    )


def _item(shape="circle", color="red", target="star"):
    return Item(None, {"shape": shape, "color": color}, "shape", target)


@pytest.mark.parametrize(
    ("answers", "kind", "expected"),
    [
        (("star", "red"), "insert", (True, True)),
        (("star", "blue"), "insert", (True, False)),  # colour answer broke
        (("a star", "red"), "insert", (False, False)),  # not one word: template broken
        (("circle", "red"), "insert", (False, True)),
        (("circle", "red"), "suppress", (True, True)),  # suppressing "star" on a circle image
        (("star", "red"), "suppress", (False, True)),
        (("square", "pink"), "suppress", (True, False)),  # pink is no colour of the world
    ],
)
def test_judge_item(answers, kind, expected):
    got = judge_item(
        _item(),
        dict(zip(("shape?", "color?"), answers, strict=True)),
        PROBES,
        CANDIDATES,
        WordJudge(),
        kind,
    )
    assert tuple(got) == expected
    assert got.both == all(expected)


def test_judge_item_needs_a_probe_for_the_target():
    with pytest.raises(ValueError, match="target attribute"):
        judge_item(_item(), {"color?": "red"}, PROBES[1:], CANDIDATES, WordJudge(), "insert")
    with pytest.raises(ValueError, match="kind"):
        judge_item(_item(), {}, PROBES, CANDIDATES, WordJudge(), "add")


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_rates_are_means_and_both_is_at_most_each(pairs):
    r = rates([Verdict(a, b) for a, b in pairs])
    assert r.n == len(pairs)
    assert math.isclose(r.concept, np.mean([a for a, _ in pairs]))
    assert r.both <= min(r.concept, r.followed) + 1e-12


def test_choose_alpha_best_both_then_smallest_magnitude():
    def r(b):
        return Rates(1.0, 1.0, b, 10)

    assert choose_alpha([(10.0, r(0.2)), (30.0, r(0.6)), (100.0, r(0.5))]) == 30.0
    assert choose_alpha([(-30.0, r(0.6)), (0.0, r(0.6)), (-10.0, r(0.1))]) == 0.0
    assert choose_alpha([(1.0, r(float("nan"))), (2.0, r(0.0))]) == 2.0
    with pytest.raises(ValueError):
        choose_alpha([])


def test_concept_neuron_found_from_data():
    rng = np.random.default_rng(0)
    labels = rng.choice(SHAPES, size=300)
    acts = rng.exponential(0.1, size=(300, 40)).astype(np.float32)
    acts[labels == "star", 17] += 2.0  # a planted star neuron
    acts[labels == "square", 5] += 1.0  # and a square one
    acts[:, 23] = 0.0  # a dead neuron
    chosen = choose_concept_neurons(acts, labels, top_n=16)
    assert chosen["star"].neuron == 17 and chosen["star"].purity == 1.0
    assert chosen["square"].neuron == 5
    ms = np.zeros(40)
    ms[5] = 0.9
    assert (
        choose_concept_neurons(acts, labels, ["square"], method="ms", ms_S=ms)["square"].neuron == 5
    )
    purity = top_image_purity(acts, labels, "star", 16)
    assert purity[23] == 0.0  # silent images never count
    with pytest.raises(ValueError, match="no image is labelled"):
        choose_concept_neurons(acts, labels, ["heart"])
    with pytest.raises(ValueError, match="ms_S"):
        choose_concept_neurons(acts, labels, method="ms")


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 5))
def test_diffmean_direction_is_difference_of_means(n_pos, n_neg, d):
    rng = np.random.default_rng(n_pos * 100 + n_neg * 10 + d)
    pos, neg = rng.normal(size=(n_pos, d)), rng.normal(size=(n_neg, d))
    got = diffmean_direction(pos, neg).numpy()
    np.testing.assert_allclose(got, pos.mean(0) - neg.mean(0), rtol=1e-5, atol=1e-5)


def test_directions_from_labels_and_errors():
    acts = np.array([[1.0, 0], [3.0, 0], [0, 2.0]])
    dirs = directions_from_labels(acts, ["a", "a", "b"])
    np.testing.assert_allclose(dirs["a"].numpy(), [2.0, -2.0])
    with pytest.raises(ValueError, match="empty"):
        diffmean_direction(np.zeros((0, 2)), acts)
    with pytest.raises(ValueError, match="same width"):
        diffmean_direction(np.zeros((2, 2)), np.zeros((2, 3)))


def test_table_files(tmp_path):
    rows = [
        TableRow("insert", "none", None, 0.0, 1.0, 0.0, 4),
        TableRow("insert", "SAE", 30.0, 0.75, 0.5, 0.5, 4),
        TableRow("suppress", "DiffMean", 2.0, 0.25, 1.0, 0.25, 4),
    ]
    sweep = [
        {"kind": "insert", "method": "SAE", "alpha": 30.0, **Rates(0.5, 0.5, 0.5, 2)._asdict()}
    ]
    outcomes = {("insert", "none"): [False] * 4, ("insert", "SAE"): [True, False, True, False]}
    table = SteeringTable(rows, sweep, [{"kind": "insert", "answers": {"q": "star"}}], outcomes)
    md = table_markdown(table)
    assert "| SAE | 30 | 75.0 % | 50.0 % | 50.0 % | 4 |" in md
    assert "concept removed" in md and "unrelated kept" in md
    out = write_steering_table(table, tmp_path / "t", note="x")
    with open(out / "steering_table.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["method"] for r in got] == ["none", "SAE", "DiffMean"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][1]["both"] == 0.5 and summary["note"] == "x"
    assert (out / "examples.jsonl").read_text().count("\n") == 1
    assert (out / "alpha_sweep.csv").exists() and (out / "steering_table.md").exists()
    with open(out / "outcomes.csv") as f:
        items = list(csv.DictReader(f))
    assert len(items) == 8 and [r["both"] for r in items[4:]] == ["1", "0", "1", "0"]
    assert {r["method"] for r in items} == {"none", "SAE"} and items[5]["item"] == "1"
