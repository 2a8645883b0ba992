"""`vlmsae demo --quick` end to end on the emoji world (the default): every promised file,
finite numbers, a README that names every figure and table, the alive share per width;
and `--world shapes`, the shapes world's demo."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmsae import toyworld
from vlmsae.cli import app

FIGURES = (
    "ms_histogram.png",
    "max_ms_vs_expansion.png",
    "ms_clip_vs_oracle.png",
    "r2_ms_vs_k.png",
    "grid_most_monosemantic.png",
    "grid_least_monosemantic.png",
    "concept_recovery.png",
)
TABLES = (
    "findings",
    "convergence",
    "concept_recovery",
    "matryoshka_groups",
    "ms_embedders",
    "alive",
    "paper_table",
    "saes",
    "k_sweep",
    "hierarchy",
    "uniqueness",
)


def emoji_models_args() -> list[str]:
    """The shipped emoji models (nothing here depends on how good they are)."""
    toyworld.clip_path(world="emoji"), toyworld.llava_path(world="emoji")
    return []


def _numbers(obj):
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), *emoji_models_args()])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-shapes") / "run"
    args = ["demo", "--quick", "--world", "shapes", "--no-steer", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_every_promised_file(demo_run):
    out, output = demo_run
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 1000, name
        for fmt in ("svg", "pdf"):  # for papers, beside every PNG
            assert (out / "figures" / name).with_suffix(f".{fmt}").stat().st_size > 1000, name
    for name in TABLES:
        lines = (out / "tables" / f"{name}.csv").read_text().splitlines()
        assert len(lines) >= 2, f"table {name} is empty"
    assert (out / "index.html").exists() and "README.md" in output
    assert (out / "explore" / "index.html").exists() and (out / "labels" / "labels.csv").exists()
    assert "explore/index.html" in (out / "README.md").read_text()  # the report links it


def test_demo_readme_names_every_figure_and_table(demo_run):
    out, _ = demo_run
    readme = (out / "README.md").read_text()
    html = (out / "index.html").read_text()
    for name in FIGURES:
        assert f"figures/{name}" in readme and f"figures/{name}" in html
    for name in TABLES:
        assert f"tables/{name}.csv" in readme


def test_demo_summary_numbers_are_finite(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    numbers = _numbers(summary)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert len(summary["findings"]) >= 7
    assert all(isinstance(f["holds"], bool) for f in summary["findings"])
    assert set(summary["saes"]) and all(
        0 <= s["r2"] <= 1 and s["l0"] > 0 for s in summary["saes"].values()
    )


def test_demo_findings_carry_intervals_and_baselines(demo_run):
    """A finding holds only where its interval excludes 0 / lies above the untrained SAEs;
    every configuration has its seeds and both untrained baselines."""
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    for f in summary["findings"]:
        iv = f["interval"]
        if iv["lo"] is not None:
            assert iv["lo"] <= iv["hi"]
        if f["holds"]:
            assert iv["lo"] is not None and iv["lo"] > 0, f["claim"]
            if "bar" in f:
                assert iv["lo"] > f["bar"], f["claim"]
    purity = summary["checks"]["spearman_ms_purity"]["interval"]
    holds = next(f["holds"] for f in summary["findings"] if "label purity" in f["claim"])
    assert holds == (purity["lo"] is not None and purity["lo"] > 0)
    assert len(summary["seeds"]) == 2
    for name, agg in summary["configs"].items():
        assert agg["r2"]["n"] == 2, name
        assert set(summary["baselines"][name]) == {"init", "random"}
    table = (out / "tables" / "paper_table.csv").read_text()
    assert "untrained (init)" in table and "active on ≥ 16 images" in table
    assert "the paper's" in table


def test_demo_runs_on_the_emoji_world_by_default(demo_run):
    """The default world is emoji: its images, its taxonomy in the hierarchy table, and its
    truth (every emoji an image shows) in label purity."""
    from vlmsae.demo.analysis import world_labels
    from vlmsae.toyworld import read_exported

    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "emoji" and summary["config"]["world"] == "emoji"
    assert json.loads((out / "world" / "test" / "world.json").read_text())["world"] == "emoji"
    readme = (out / "README.md").read_text()
    assert "emoji world" in readme and "348 concept values" in readme  # 341 emoji, 5 bg, 1-2
    assert "same subgroup" in readme  # the hierarchy table speaks of the Unicode taxonomy
    exported = read_exported(out / "world" / "test")
    labels = world_labels(out / "world", [str(im.path) for im in exported])
    two = [i for i, im in enumerate(exported) if im.record.second != "none"]
    assert two and labels.present["emoji"][two].sum(1).tolist() == [2] * len(two)
    emoji = toyworld.get_world("emoji").attributes["emoji"]
    main = [emoji[v] for v in labels.taxonomy["emoji"]]
    assert main == [im.record.emoji for im in exported]


def test_demo_reports_the_alive_share_per_width(demo_run):
    """One row per configuration of the Table grid with its alive share and an interval
    over seeds; summary.json holds the same intervals and every SAE's share."""
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "tables" / "alive.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "alive share" in header and len(rows) - 1 == len(summary["alive"])
    for name, got in summary["alive"].items():
        agg = summary["configs"][name]["alive_share"]
        assert agg["n"] == 2 and 0 <= agg["mean"] <= 1, name
        for key in ("alive_share", "kept_share"):
            assert got[key]["lo"] <= got[key]["estimate"] <= got[key]["hi"], (name, key)
    for name, s in summary["saes"].items():
        assert s["kept_share"] <= s["alive_share"] <= 1, name
        assert math.isclose(s["dead_fraction"], 1 - s["alive_share"]), name


def test_demo_on_the_shapes_world(shapes_run):
    """``--world shapes`` is the shapes world's demo, with its own sizes and taxonomy."""
    from vlmsae.demo.config import DemoConfig

    out = shapes_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "shapes"
    assert json.loads((out / "world" / "test" / "world.json").read_text())["world"] == "shapes"
    assert "22 concept values" in (out / "README.md").read_text()
    assert "same family" in (out / "README.md").read_text()
    assert (out / "tables" / "alive.csv").read_text().count("\n") >= 2
    full = DemoConfig(world="shapes")  # the shapes demo as before the emoji world
    assert (full.n_train, full.n_test) == (8_000, 2_000)
    assert (DemoConfig().world, DemoConfig().n_test) == ("emoji", 6_000)


def test_demo_refuses_a_directory_of_another_world(shapes_run, tmp_path):
    """Resuming a shapes run as an emoji one would mix the worlds: one Error line, exit 2;
    so do an unknown world and missing models (before any image is rendered)."""
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(shapes_run)])
    assert result.exit_code == 2, result.output
    assert "holds a demo of the shapes world" in result.output
    assert "--world shapes" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["demo", "--quick", "--world", "cats", "--out", "x"])
    assert result.exit_code == 2 and "unknown toy world 'cats'" in result.output
    args = ["--world", "shapes", "--models-dir", str(tmp_path / "none")]
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and "no toy clip model" in result.output
    assert "--models-dir" in result.output and not (tmp_path / "x" / "world").exists()


def test_label_purity_counts_every_value_an_image_holds():
    """With membership labels a neuron whose top images all show a dog (as main or second
    emoji) is pure; with one value per image it is as before."""
    from vlmsae.demo.truth import label_purity

    top_KT = np.array([[0, 1, 2, -1], [-1, -1, -1, -1], [3, 3, 1, 0]])
    held_NV = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], bool)  # value 1: dog
    got = label_purity(top_KT, {"emoji": held_NV})
    assert got[0] == pytest.approx(2 / 3) and np.isnan(got[1]) and got[2] == pytest.approx(0.75)
    held_NV[0, 1] = True  # image 0 shows a dog too: all three top images of neuron 0 do
    assert label_purity(top_KT, {"emoji": held_NV})[0] == 1.0
    ints = {"a": np.array([0, 0, 1, 2]), "b": np.array([1, 1, 1, 0])}
    np.testing.assert_array_equal(label_purity(top_KT, ints), [1.0, np.nan, 0.5])


def test_demo_reports_convergence_per_configuration(demo_run):
    """Every configuration has its validation R² at 3/4 of training and at the end, read from
    each seed's metrics.jsonl; "converged" is exactly |change| < tol on every seed."""
    from vlmsae.train.state import MetricsLog

    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    conv = summary["convergence"]
    steps, tol = summary["config"]["steps"], conv["tol"]
    assert set(conv["configs"]) == set(summary["configs"])
    rows = (out / "tables" / "convergence.csv").read_text().splitlines()
    assert len(rows) - 1 == len(conv["configs"])
    for name, got in conv["saes"].items():
        records = MetricsLog.read(out / "saes" / name / "metrics.jsonl")
        r2 = {m["step"]: m["val"]["r2"] for m in records}
        assert got["step_end"] == steps and got["step_3q"] == 3 * steps // 4, name
        assert got["r2_end"] == r2[steps] and got["r2_3q"] == r2[3 * steps // 4], name
        assert got["converged"] == (abs(r2[steps] - r2[3 * steps // 4]) < tol), name
    for name, c in conv["configs"].items():
        seeds = [v for k, v in conv["saes"].items() if k.startswith(f"{name}-s")]
        assert c["seeds"] == len(seeds) == 2 and c["converged"] == all(
            s["converged"] for s in seeds
        )
    assert conv["all_converged"] == all(c["converged"] for c in conv["configs"].values())


def test_demo_concept_recovery_matches_the_library(demo_run):
    """The concept-recovery numbers of an SAE are those of vlmsae.evaluate on its codes of
    the held-out images; the table has trained, untrained and raw rows, with intervals."""
    import scipy.sparse as sp
    import torch

    from vlmsae.data.store import ActivationStore
    from vlmsae.demo.recovery import concept_labels
    from vlmsae.evaluate.concepts import concept_detection
    from vlmsae.sae import SAE

    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    name = next(n for n in summary["saes"] if n.startswith("layer_4-batchtopk-x4-k4"))
    store = ActivationStore(out / "acts" / "test" / "layer_4")
    labels = concept_labels(store)
    assert "second" not in labels.sets and {"emoji", "background"} <= set(labels.sets)
    with torch.no_grad():
        codes = SAE.load(out / "saes" / name).encode(torch.from_numpy(store.to_numpy()))
    det = concept_detection(sp.csr_matrix(codes.numpy()), labels.present)
    got = summary["saes"][name]
    assert got["concepts_detected"] == pytest.approx(float((det.best_f1 >= 0.5).mean()))
    assert got["mean_best_f1"] == pytest.approx(float(det.best_f1.mean()))
    for key in ("probe1_balanced_accuracy", "probe5_balanced_accuracy"):
        assert 0 <= got[key] <= 1
    assert -1 < got["recovered_cosine_mean"] <= 1.0 + 1e-6
    table = (out / "tables" / "concept_recovery.csv").read_text()
    assert "untrained (init)" in table and "raw neurons" in table
    for config, keys in summary["concept_recovery"].items():
        iv = keys["concepts_detected"]["trained"]
        assert iv["lo"] <= iv["estimate"] <= iv["hi"], config
        assert keys["concepts_detected"]["raw"] is not None
    assert set(summary["raw_recovery"]) == {"layer_4", "proj"}


def test_demo_scores_ms_with_the_independent_embedder(demo_run):
    """Every finding's MS is under the world's toy DINOv2 (not the decomposed toy CLIP): its
    embedding store is of that model, and an SAE's mean MS is the library's MS of its codes
    under it; the toy CLIP's and the oracle's MS are reported beside it."""
    import scipy.sparse as sp
    import torch

    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics import monosemanticity
    from vlmsae.sae import SAE

    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    dino = ActivationStore(out / "embeddings" / "dino")
    assert "dino" in json.dumps(dino.manifest) and "clip" not in str(dino.manifest.get("model"))
    name = next(n for n in summary["saes"] if n.startswith("layer_4-matryoshka-x4-k4"))
    store = ActivationStore(out / "acts" / "test" / "layer_4")
    with torch.no_grad():
        codes = SAE.load(out / "saes" / name).encode(torch.from_numpy(store.to_numpy()))
    ms = monosemanticity(sp.csr_matrix(codes.numpy()), dino).ms
    got = summary["saes"][name]
    assert got["mean_ms_dino"] == pytest.approx(float(np.nanmean(ms)))
    assert got["mean_ms_dino"] != pytest.approx(got["mean_ms_clip"])
    assert {"mean_ms_oracle", "p50_ms_active_dino", "p90_ms_active_dino"} <= set(got)
    assert "toy DINOv2" in (out / "README.md").read_text()


def test_every_ms_of_the_demo_names_its_embedder_and_labels_give_both_shares(demo_run):
    """The explorer's MS columns are the toy DINOv2's (the findings' MS, ranking the
    neurons), the toy CLIP's and the oracle's, each named;
    the tables name the embedder of every MS column; the report's label accuracy gives the
    high-MS share and the share over every labelled neuron, each with its denominator."""
    from vlmsae.explore.cards import read_index

    out, _ = demo_run
    index = read_index(out / "explore")
    assert [(m["column"], m["embedder"]) for m in index["meta"]["ms"]] == [
        ("ms", "toy DINOv2"),
        ("ms_toy_clip", "toy CLIP"),
        ("ms_oracle", "oracle"),
    ]
    assert index["meta"]["min_active"] == 16
    for name in ("saes", "k_sweep"):
        with open(out / "tables" / f"{name}.csv", newline="") as f:
            header = next(csv.reader(f))
        ms_cols = [c for c in header if "MS" in c]
        assert ms_cols and all("toy CLIP" in c or "oracle" in c for c in ms_cols), header
    summary = json.loads((out / "summary.json").read_text())
    toy = summary["explore"]["labels"]["toyworld"]
    readme = (out / "README.md").read_text()
    high = f"{toy['n_correct']} of {toy['n_monosemantic']}"
    every = f"{toy['n_correct_all_labelled']:,} of {toy['n_labelled']:,}"
    assert f"labels name a true concept of {high}" in readme
    assert f"and of {every}" in readme and "labelled neurons" in readme
    assert toy["n_labelled"] >= toy["n_monosemantic"]


def test_demo_steering_pools_its_seeds_with_intervals(demo_run):
    """Each steering seed is a whole replicate (its own folder, targets and neurons); the
    pooled "both" rate is the mean of the seeds' rates (equal test sets), its interval holds
    it, the difference SAE − DiffMean is that of the pooled rates and the mean of the seeds'
    differences, and the per-item outcomes behind it are on disk."""
    out, _ = demo_run
    st = json.loads((out / "summary.json").read_text())["steering"]
    seeds = st["seeds"]
    assert len(seeds) == 2
    assert set(st["neurons"]) == {str(s) for s in seeds}
    assert st["neurons"][str(seeds[0])].keys() != st["neurons"][str(seeds[1])].keys()
    for row in st["rows"]:
        per_seed = row["per_seed"]
        both = row["both"]
        assert both["n"] == sum(r["n"] for r in per_seed.values())
        assert both["estimate"] == pytest.approx(np.mean([r["both"] for r in per_seed.values()]))
        assert both["lo"] - 1e-12 <= both["estimate"] <= both["hi"] + 1e-12
    for kind, diff in st["sae_minus_diffmean"].items():
        rate = {r["method"]: r for r in st["rows"] if r["protocol"] == kind}
        assert diff["estimate"] == pytest.approx(
            rate["SAE"]["both"]["estimate"] - rate["DiffMean"]["both"]["estimate"]
        )
        per_seed = st["sae_minus_diffmean_per_seed"][kind]
        assert diff["estimate"] == pytest.approx(np.mean(list(per_seed.values())))
        for s in seeds:
            with open(out / "steering" / f"seed{s}" / "outcomes.csv", newline="") as f:
                items = [r for r in csv.DictReader(f) if r["kind"] == kind]
            got = {
                m: [int(r["both"]) for r in items if r["method"] == m] for m in ("SAE", "DiffMean")
            }
            assert np.mean(got["SAE"]) == pytest.approx(rate["SAE"]["per_seed"][str(s)]["both"])
            assert per_seed[str(s)] == pytest.approx(np.mean(got["SAE"]) - np.mean(got["DiffMean"]))
    with open(out / "tables" / "steering_seeds.csv", newline="") as f:
        assert len(list(csv.reader(f))) - 1 == 2 * 3 * len(seeds)


def test_steering_verdicts():
    """The verdict follows the interval of SAE − DiffMean, and says when there is none."""
    from vlmsae.demo.steering import verdict
    from vlmsae.metrics.stats import Interval

    nan = float("nan")
    assert verdict(Interval(0.1, 0.02, 0.2, 90)) == "reproduced"
    assert verdict(Interval(-0.1, -0.2, -0.02, 90)).startswith("reversed")
    assert verdict(Interval(0.05, -0.02, 0.1, 90)).startswith("not shown")
    assert verdict(Interval(0.0, 0.0, 0.0, 90)).startswith("no difference")
    assert verdict(Interval(1.0, nan, nan, 1)) == "no interval (n=1)"


def test_demo_refuses_a_directory_of_another_objects_regime(tmp_path):
    """A one-emoji world is not resumed as the two-emoji default (their truths differ)."""
    from vlmsae.core.errors import UserError
    from vlmsae.demo.config import DemoConfig
    from vlmsae.demo.stages import check_world
    from vlmsae.toyworld import export_imagefolder
    from vlmsae.toyworld.worlds import get_world

    split = export_imagefolder(tmp_path, split="test", n=2, world=get_world("emoji", objects=1))
    check_world(split, DemoConfig.quick(out_dir=str(tmp_path), objects=1))
    with pytest.raises(UserError, match="objects.*1.*--objects"):
        check_world(split, DemoConfig.quick(out_dir=str(tmp_path)))
