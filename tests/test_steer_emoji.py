"""Steering on the emoji world: the shapes world's protocol (SAE neurons vs DiffMean, α on
``val``, rates on ``test``) on a seeded subset of the 341 emoji, with the caption's
background as the "prompt followed" probe. The models are the shipped emoji models when
they exist, else tiny random ones: the tests check the protocol, never model quality."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from emoji_models import emoji_models
from vlmsae.cli import app
from vlmsae.steer.compare import SteerEvalConfig
from vlmsae.steer.evaluate import KINDS, Item, judge_item
from vlmsae.steer.judges import WordJudge
from vlmsae.steer.toy import ToySteeringConfig, toyworld_steering
from vlmsae.steer.toy_tasks import (
    steering_targets,
    toy_candidates,
    toy_items,
    toy_probes,
    train_set,
)
from vlmsae.toyworld.emoji import emoji_of
from vlmsae.toyworld.worlds import get_world

N_TARGETS, N_PER_TARGET, N_VAL, N_TEST = 3, 16, 6, 9
EMOJI = get_world("emoji")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    models = emoji_models(tmp_path_factory)
    out = tmp_path_factory.mktemp("steer-emoji")
    cfg = ToySteeringConfig(
        world="emoji",
        models_dir=str(models),
        n_targets=N_TARGETS,
        n_per_target=N_PER_TARGET,
        n_train=48,
        n_val=N_VAL,
        n_test=N_TEST,
        expansion=4,
        steps=60,
        batch_size=256,
        eval=SteerEvalConfig(
            sae_alphas=(4.0, 16.0),
            sae_suppress_alphas=(0.0,),
            diffmean_alphas=(1.0,),
            diffmean_suppress_alphas=(1.0,),
            batch_size=16,
            n_examples=2,
        ),
    )
    return toyworld_steering(out, cfg), out, cfg


def test_targets_spread_over_the_unicode_groups_and_follow_the_seed():
    targets = steering_targets("emoji", 8, seed=0)
    groups = [emoji_of(t).group for t in targets]
    assert len(set(groups)) == 8  # one per group
    assert targets == steering_targets("emoji", 8, seed=0)
    assert targets != steering_targets("emoji", 8, seed=1)
    assert len(steering_targets("emoji", 20, seed=0)) == 20
    assert steering_targets("shapes", 3) == get_world("shapes").attributes["shape"]  # all


def test_items_show_the_target_only_where_they_should():
    targets = steering_targets("emoji", N_TARGETS, seed=0)
    for item in toy_items("val", 12, "suppress", 0, "emoji", targets):
        assert item.value == item.facts["emoji"] and item.value in targets
    many = set(steering_targets("emoji", 120, seed=0))  # many seconds are targets too
    inserted = toy_items("val", 30, "insert", 0, "emoji", tuple(many))
    for item in inserted:
        assert item.value in many and item.value != item.facts["emoji"]
        assert item.facts["background"].endswith(" background")
    # insertion images show no target at all, not even as the second emoji
    records = list(EMOJI.iter_world("val", 400))
    kept = [r.emoji for r in records if not many & set(r.present)][:30]
    main_only = [r.emoji for r in records if r.emoji not in many][:30]
    assert kept != main_only  # the second emoji matters in these images
    assert [it.facts["emoji"] for it in inserted] == kept


def test_every_target_has_enough_training_images():
    targets = steering_targets("emoji", N_TARGETS, seed=0)
    images, labels = train_set("emoji", 32, targets, N_PER_TARGET, seed=0)
    counts = Counter(labels)
    assert all(counts[t] >= N_PER_TARGET for t in targets), counts
    assert len(images) == len(labels) >= 32


def test_the_caption_probe_judges_the_background_not_an_emoji_name():
    probes, cands = toy_probes("emoji"), toy_candidates("emoji")
    one_word, caption = (p.question for p in probes)
    item = Item(None, {"emoji": "line", "background": "plain background"}, "emoji", "dog")
    right = {one_word: "dog", caption: "a dotted line face on a plain background"}
    wrong = {one_word: "dog", caption: "a dotted line face on a striped background"}
    cut = {one_word: "dog", caption: "a dotted line face on a"}
    judge = WordJudge()
    assert judge_item(item, right, probes, cands, judge, "insert") == (True, True)
    assert judge_item(item, wrong, probes, cands, judge, "insert") == (True, False)
    assert judge_item(item, cut, probes, cands, judge, "insert") == (True, False)
    two_words = {one_word: "a dog", caption: right[caption]}
    assert judge_item(item, two_words, probes, cands, judge, "insert") == (False, False)


def test_the_table_has_every_method_on_the_test_items(run):
    result, _, _ = run
    rows = result.comparison.table.rows
    assert {(r.kind, r.method) for r in rows} == {
        (k, m) for k in KINDS for m in ("none", "SAE", "DiffMean")
    }
    for r in rows:
        assert r.n == N_TEST
        assert 0 <= r.both <= min(r.concept, r.followed) <= 1


def test_each_target_gets_a_neuron_from_data(run):
    result, _, cfg = run
    targets = steering_targets("emoji", N_TARGETS, cfg.seed)
    neurons = result.comparison.neurons
    assert set(neurons) == set(targets)
    assert all(0 <= n.neuron < result.sae.cfg.d_sae for n in neurons.values())


def test_the_summary_names_the_world_the_targets_and_the_caption_answers(run):
    _, out, cfg = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "emoji" and summary["config"]["world"] == "emoji"
    assert summary["targets"] == list(steering_targets("emoji", N_TARGETS, cfg.seed))
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    questions = {p.question for p in toy_probes("emoji")}
    assert examples and all(set(e["answers"]) == questions for e in examples)
    assert all(e["target"].split("=")[1] in summary["targets"] for e in examples)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--world", "nope"], "unknown toy world 'nope'"),
        (["--world", "emoji", "--n-targets", "1"], "n_targets must be in [2, 341]"),
        (["--world", "emoji", "--models-dir", "/nonexistent"], "no toy llava model"),
    ],
)
def test_steer_eval_refuses_bad_options_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["steer-eval", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
