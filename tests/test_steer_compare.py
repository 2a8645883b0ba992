"""SAE steering vs DiffMean (vlmsae.steer.compare): config, items, and the whole comparison
on the shipped toy LLaVA with an SAE trained in a second on its tower's activations."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsae.steer.compare import SteerEvalConfig, compare_steering, make_items
from vlmsae.steer.evaluate import KINDS, Rates, choose_alpha

SHAPES = ("circle", "star", "square")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "error"}, "mode must be one of"),
        ({"sae_alphas": ()}, "sae_alphas must hold"),
        ({"sae_suppress_alphas": ()}, "sae_suppress_alphas must hold"),
        ({"diffmean_alphas": ()}, "diffmean_alphas must hold"),
        ({"diffmean_suppress_alphas": ()}, "diffmean_suppress_alphas must hold"),
        ({"top_n": 0}, "top_n"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_steer_eval_config_refuses_bad_values(kwargs, match):
    SteerEvalConfig(mode="preserve")  # a valid non-default
    with pytest.raises(ValueError, match=match):
        SteerEvalConfig(**kwargs)


def test_make_items_targets():
    facts = [{"shape": s, "color": "red"} for s in SHAPES * 10]
    images = list(range(len(facts)))  # stand-ins: items only carry them
    insert = make_items(images, facts, "shape", SHAPES, "insert", seed=3)
    suppress = make_items(images, facts, "shape", SHAPES, "suppress", seed=3)
    assert [it.image for it in insert] == images
    assert all(
        it.attribute == "shape" and it.facts == f for it, f in zip(insert, facts, strict=True)
    )
    assert all(
        it.value != f["shape"] and it.value in SHAPES for it, f in zip(insert, facts, strict=True)
    )
    assert {it.value for it in insert} == set(SHAPES)  # every other value gets drawn
    assert [it.value for it in suppress] == [f["shape"] for f in facts]
    assert insert == make_items(images, facts, "shape", SHAPES, "insert", seed=3)
    with pytest.raises(ValueError, match="nothing to insert"):
        make_items(images[:1], facts[:1], "shape", ["circle"], "insert")
    with pytest.raises(ValueError, match="unknown kind"):
        make_items(images, facts, "shape", SHAPES, "add")


# ---- the comparison on the toy world ------------------------------------------------------

N_TRAIN, N_VAL, N_TEST = 256, 8, 6
CFG = SteerEvalConfig(
    sae_alphas=(1.0, 4.0),
    sae_suppress_alphas=(0.0, -2.0),
    diffmean_alphas=(1.0, 4.0),
    diffmean_suppress_alphas=(1.0, 2.0, 4.0),
    n_examples=2,
)


@pytest.fixture(scope="module")
def toy():
    """The toy LLaVA, the block it reads, ``train`` images, their shapes, a small TopK SAE."""
    from vlmsae.steer.llava import load_llava
    from vlmsae.steer.toy import ToySteeringConfig, train_toy_sae
    from vlmsae.toyworld import llava_path, make_world

    llava = load_llava(llava_path())
    layer = max(llava.encoder.read_layers)
    images, records = make_world("train", N_TRAIN)
    sae_cfg = ToySteeringConfig(expansion=4, k=8, steps=150, batch_size=512)
    sae = train_toy_sae(llava, images, layer, sae_cfg)
    return llava, layer, images, [r.shape for r in records], sae


@pytest.fixture(scope="module")
def comparison(toy):
    """The comparison, with a validation concept that no test item targets."""
    from vlmsae.steer.judges import WordJudge
    from vlmsae.steer.toy import toy_candidates, toy_items, toy_probes

    llava, layer, images, labels, sae = toy
    val = {k: toy_items("val", N_VAL, k) for k in KINDS}
    val_only = val["insert"][0].value
    test = {k: [it for it in toy_items("test", N_TEST, k) if it.value != val_only] for k in KINDS}
    args = (toy_probes(), toy_candidates(), WordJudge(), CFG)
    return compare_steering(llava, sae, layer, images, labels, val, test, *args), val, test


def test_compare_chooses_each_concept_neuron_from_the_training_images(toy, comparison):
    from vlmsae.steer.neurons import image_codes, top_image_purity

    llava, layer, images, labels, sae = toy
    result, val, test = comparison
    concepts = {it.value for items in [*val.values(), *test.values()] for it in items}
    assert set(result.neurons) == concepts  # validation-only concepts need a method too
    codes_NS = image_codes(llava, sae, images, layer)
    labels = np.asarray(labels)
    for c, n in result.neurons.items():
        purity_S = top_image_purity(codes_NS, labels, c, CFG.top_n)
        assert n.concept == c and 0 <= n.neuron < codes_NS.shape[1]
        assert n.purity == pytest.approx(purity_S.max()) == pytest.approx(purity_S[n.neuron])
        assert n.purity > np.mean(labels == c)  # purer than a random neuron would be
    peaks = [codes_NS[:, n.neuron].max() for n in result.neurons.values()]
    assert result.alpha_unit == pytest.approx(np.median(peaks)) and result.alpha_unit > 0
    assert set(result.seconds) == {"neurons_and_directions", "table"}


def test_compare_table_has_both_methods_and_alphas_chosen_on_validation(comparison):
    result, val, test = comparison
    table, unit = result.table, result.alpha_unit
    methods = ("none", "SAE", "DiffMean")
    assert [(r.kind, r.method) for r in table.rows] == [(k, m) for k in KINDS for m in methods]
    grids = {
        ("insert", "SAE"): [unit * a for a in CFG.sae_alphas],
        ("suppress", "SAE"): [unit * a for a in CFG.sae_suppress_alphas],
        ("insert", "DiffMean"): list(CFG.diffmean_alphas),
        ("suppress", "DiffMean"): list(CFG.diffmean_suppress_alphas),
    }
    for row in table.rows:
        assert row.n == len(test[row.kind])
        assert all(0.0 <= r <= 1.0 for r in (row.concept, row.followed, row.both)), row
        assert row.both <= min(row.concept, row.followed)
        if row.method == "none":
            assert row.alpha is None
            continue
        sweep = [s for s in table.sweeps if (s["kind"], s["method"]) == (row.kind, row.method)]
        assert [s["alpha"] for s in sweep] == pytest.approx(grids[row.kind, row.method])
        assert all(s["n"] == len(val[row.kind]) for s in sweep)  # validation, not test
        rates = [(s["alpha"], Rates(s["concept"], s["followed"], s["both"], s["n"])) for s in sweep]
        assert row.alpha == choose_alpha(rates)
    for k in KINDS:
        for m in methods:
            got = [e for e in table.examples if (e["kind"], e["method"]) == (k, m)]
            assert len(got) == min(CFG.n_examples, len(test[k]))


def test_compare_refuses_validation_without_a_kind_of_the_test(tiny_llava, tiny_sae):
    from vlmsae.steer.judges import WordJudge
    from vlmsae.steer.toy import toy_candidates, toy_items, toy_probes

    test = {k: toy_items("test", 2, k) for k in KINDS}
    val = {"insert": toy_items("val", 2, "insert")}
    args = (toy_probes(), toy_candidates(), WordJudge(), CFG)
    with pytest.raises(ValueError, match="no validation items for 'suppress'"):
        compare_steering(tiny_llava, tiny_sae, 2, [], [], val, test, *args)


def test_compare_test_rates_are_measured_at_the_chosen_alpha(toy, comparison):
    """Re-run each method on the test items at the α its row reports: the same rates."""
    from vlmsae.steer.diffmean import DiffMeanSteering, directions_from_labels
    from vlmsae.steer.evaluate import evaluate_steering, method_attacher
    from vlmsae.steer.judges import WordJudge
    from vlmsae.steer.neurons import image_activations
    from vlmsae.steer.steering import SAESteering
    from vlmsae.steer.toy import toy_candidates, toy_probes

    llava, layer, images, labels, sae = toy
    result, _, test = comparison
    directions = directions_from_labels(image_activations(llava, images, layer), labels)
    for row in result.table.rows:
        if row.method == "SAE":
            methods = {
                c: SAESteering(sae, layer, (n.neuron,), CFG.mode, CFG.pre_zero)
                for c, n in result.neurons.items()
            }
        elif row.method == "DiffMean":
            methods = {c: DiffMeanSteering(d, layer, row.kind) for c, d in directions.items()}
        else:
            continue
        attach = method_attacher(llava, methods)
        args = (test[row.kind], toy_probes(), toy_candidates(), WordJudge(), row.kind)
        ev = evaluate_steering(llava, attach, row.alpha, *args, max_new_tokens=CFG.max_new_tokens)
        assert tuple(ev.rates) == tuple(row[3:]), row
