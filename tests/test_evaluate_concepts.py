"""``vlmsae evaluate`` concepts: detection and probing against brute-force definitions, a
planted SAE, label sources, and the command end to end (with its refusals)."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from explore_fixtures import make_images, make_sae, make_token_store
from vlmsae.cli import app
from vlmsae.data.store import ActivationStore
from vlmsae.evaluate.concepts import concept_detection
from vlmsae.evaluate.config import EvaluateConfig, ProbingConfig
from vlmsae.evaluate.labels import ConceptLabels
from vlmsae.evaluate.probing import rank_by_mean_difference, sparse_probing, train_test_split
from vlmsae.evaluate.run import evaluate_sae_concepts

# -- brute-force references -------------------------------------------------------------


def brute_f1(codes_NS: np.ndarray, y_NC: np.ndarray) -> np.ndarray:
    """``[C, S]`` F1 of "latent > 0" as a prediction of each concept, pair by pair."""
    out = np.zeros((y_NC.shape[1], codes_NS.shape[1]))
    for c in range(y_NC.shape[1]):
        for s in range(codes_NS.shape[1]):
            pred, true = codes_NS[:, s] > 0, y_NC[:, c]
            tp, fp, fn = (pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()
            out[c, s] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return out


def brute_auroc(score: np.ndarray, true: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(equal), over every pair."""
    pos, neg = score[true], score[~true]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _codes(draw, n: int, s: int, negative: bool) -> np.ndarray:
    values = st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 2.0] + ([-1.0] if negative else []))
    return np.array(draw(st.lists(values, min_size=n * s, max_size=n * s))).reshape(n, s)


@st.composite
def codes_and_labels(draw, negative: bool = False):
    n, s, c = draw(st.integers(4, 30)), draw(st.integers(1, 9)), draw(st.integers(1, 5))
    codes = _codes(draw, n, s, negative)
    y = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))).reshape(n, c)
    return codes, y, draw(st.integers(1, n + 3))


# -- detection --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=codes_and_labels(), sparse=st.booleans())
def test_detection_equals_brute_force(data, sparse):
    codes, y, chunk = data
    det = concept_detection(sp.csr_matrix(codes) if sparse else codes, sp.csr_matrix(y),
                            chunk_rows=chunk)  # fmt: skip
    f1 = brute_f1(codes, y)
    for c in range(y.shape[1]):
        assert det.best_f1[c] == pytest.approx(f1[c].max())
        if f1[c].max() == 0:
            assert det.best_latent[c] == -1 and np.isnan(det.auroc[c])
            continue
        assert det.best_latent[c] == int(np.argmax(f1[c]))  # ties: lowest id
        s = det.best_latent[c]
        assert det.precision[c] == pytest.approx(
            (codes[y[:, c], s] > 0).sum() / (codes[:, s] > 0).sum()
        )
        if y[:, c].all():
            assert np.isnan(det.auroc[c])
        else:
            assert det.auroc[c] == pytest.approx(brute_auroc(codes[:, s], y[:, c]))
    for s in range(codes.shape[1]):
        best = f1[:, s].max()
        assert det.latent_f1[s] == pytest.approx(best)
        assert det.latent_concept[s] == (int(np.argmax(f1[:, s])) if best > 0 else -1)
    assert (det.n_active == (codes > 0).sum(0)).all()


@settings(max_examples=30, deadline=None)
@given(data=codes_and_labels(negative=True))
def test_detection_of_signed_neurons_ranks_negative_values_below_zero(data):
    """Raw neurons can be negative: "active" is > 0, and AUROC ranks every value."""
    codes, y, chunk = data
    det = concept_detection(codes, y, chunk_rows=chunk)
    f1 = brute_f1(codes, y)
    for c in np.flatnonzero((f1.max(1) > 0) & ~y.all(0)):
        s = det.best_latent[c]
        assert det.best_f1[c] == pytest.approx(f1[c].max())
        assert det.auroc[c] == pytest.approx(brute_auroc(codes[:, s], y[:, c]))


# -- probing ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(data=codes_and_labels(), k=st.integers(1, 12))
def test_probe_latents_have_the_largest_mean_difference(data, k):
    codes, y, _ = data
    chosen = rank_by_mean_difference(sp.csr_matrix(codes), sp.csr_matrix(y), k)
    for c in np.flatnonzero(y.any(0) & ~y.all(0)):  # the concepts that are probed
        pos, neg = y[:, c], ~y[:, c]
        gap = np.abs(codes[pos].mean(0) - codes[neg].mean(0))
        want = np.sort(gap)[::-1][: min(k, codes.shape[1])]
        np.testing.assert_allclose(gap[chosen[c]], want, atol=1e-9)  # best first


def test_probes_equal_scikit_learn():
    """Each batched Newton fit is sklearn's balanced L2 logistic regression (C = 1/(n·l2))."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    n, s, c = 300, 40, 4
    y = rng.random((n, c)) < 0.3
    x = sp.random(n, s, density=0.2, random_state=1, format="csr").toarray()
    x[:, 3] += y[:, 0]  # one informative latent
    cfg = ProbingConfig(k_values=(1, 3, 7), l2=1e-2)
    res = sparse_probing(sp.csr_matrix(x), sp.csr_matrix(y), cfg)
    train, test = train_test_split(n, cfg.test_fraction, cfg.seed)
    assert res.latents[0, 0] == 3
    for ci in range(c):
        for j, k in enumerate(cfg.k_values):
            cols = res.latents[ci, :k]
            a, b = x[train][:, cols], x[test][:, cols]
            mean, std = a.mean(0), np.where(a.std(0) > 0, a.std(0), 1)
            lr = sklearn.LogisticRegression(C=1 / (len(train) * cfg.l2), class_weight="balanced",
                                            tol=1e-12, max_iter=10_000)  # fmt: skip
            lr.fit((a - mean) / std, y[train, ci])
            pred = lr.predict((b - mean) / std)
            assert res.accuracy[ci, j] == pytest.approx((pred == y[test, ci]).mean())
    assert res.balanced_accuracy[0, 0] > 0.9


# -- a planted SAE ----------------------------------------------------------------------


def _planted(tmp_path: Path, n: int = 120, c: int = 6):
    """A store whose rows are the concept indicators and a ReLU SAE with one latent per
    concept (``relu(y_c − ½)``) plus two latents that never fire."""
    from vlmsae import SAE, SAEConfig
    from vlmsae.data.store import ActivationStore

    rng = np.random.default_rng(0)
    y = rng.random((n, c)) < 0.3
    y[0], y[1] = True, False  # every concept has present and absent images
    meta = {"model": "m", "hookpoint": "post_mlp_residual", "layer": 0, "tokens": "cls"}
    images = [str(tmp_path / f"{i}.png") for i in range(n)]
    store = ActivationStore.write(tmp_path / "acts", y.astype(np.float32), meta, images=images)
    sae = SAE(SAEConfig(d_in=c, d_sae=c + 2, sparsity="relu", k=None)).eval()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, :c] = torch.eye(c)
        sae.b_enc[:] = -0.5
        sae.b_dec.zero_()
    names = tuple(f"c{i}" for i in range(c))
    labels = ConceptLabels(("planted",) * c, names, sp.csr_matrix(y), "planted")
    return sae, store, labels


def test_a_planted_sae_recovers_every_concept(tmp_path):
    sae, store, labels = _planted(tmp_path)
    cfg = EvaluateConfig(probing=ProbingConfig(k_values=(1, 2)))
    ev = evaluate_sae_concepts(sae, store, labels, cfg)
    det = ev.detection["sae"]
    c = len(labels.values)
    np.testing.assert_array_equal(det.best_latent, np.arange(c))
    np.testing.assert_array_equal(det.best_f1, np.ones(c))
    np.testing.assert_array_equal(det.auroc, np.ones(c))
    np.testing.assert_array_equal(det.latent_concept, [*range(c), -1, -1])
    np.testing.assert_array_equal(ev.claims(), np.ones(c))  # no concept split
    np.testing.assert_array_equal(ev.probing["sae"].accuracy, np.ones((c, 2)))
    s = ev.summary()["detection"]["sae"]
    assert s["share_detected"] == 1.0 and s["mean_best_f1"] == 1.0 and s["n_concepts_split"] == 0


# -- the command ------------------------------------------------------------------------


def _run(*args) -> object:
    return CliRunner().invoke(app, ["evaluate", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Images in two class folders, every token of each in a store, a TopK SAE."""
    root = tmp_path_factory.mktemp("evaluate")
    paths = make_images(root / "imgs", 24)
    make_token_store(root / "acts", paths, d=8)
    make_sae(root / "sae", 8, 32, k=4)
    return root


def test_cli_end_to_end_on_folder_classes(tiny):
    out = tiny / "out"
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels",
                  tiny / "imgs", "--out", out, "--k", "1,2")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    det = summary["concepts"]["detection"]
    assert set(det) == {"sae", "raw", "untrained"} and det["sae"]["n_concepts"] == 2
    assert summary["neurons"]["n_neurons"] == 32 and summary["images"]["n_images"] == 24
    rows = list(csv.DictReader((out / "concepts.csv").open()))
    assert [r["concept"] for r in rows] == ["class:blue", "class:red"]
    assert {r["n_images"] for r in rows} == {"12"}
    assert len(list(csv.DictReader((out / "latents.csv").open()))) == 32
    for name in ("f1_hist.png", "probing.png", "summary.txt"):
        assert (out / name).is_file()
    assert "concept detection" in result.output and "k-sparse probing" in result.output


def test_cli_labels_from_a_csv_escape_formulas(tiny):
    csv_path = tiny / "labels.csv"
    lines = ["path,striped,tags"]
    for i, p in enumerate(sorted((tiny / "imgs").rglob("*.png"))):
        lines.append(
            f"{p.relative_to(tiny)},{i % 3 == 0},=HYPERLINK(1);{'odd' if i % 2 else 'even'}"
        )
    csv_path.write_text("\n".join(lines) + "\n")
    out = tiny / "out_csv"
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels", csv_path,
                  "--out", out, "--no-baselines", "--k", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "concepts.csv").open()))
    names = {r["concept"] for r in rows}
    assert names == {"label:striped", "tags:even", "tags:odd"}  # =HYPERLINK is on every image
    assert json.loads((out / "summary.json").read_text())["concepts"]["n_concepts_dropped"] == 1
    # a concept value that reads as a formula is written as text
    csv_path.write_text("path,tag\n" + "\n".join(
        f"{p.relative_to(tiny)},{'=cmd' if i % 2 else '@x'}"
        for i, p in enumerate(sorted((tiny / "imgs").rglob("*.png")))) + "\n")  # fmt: skip
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels", csv_path,
                  "--out", out, "--no-baselines", "--k", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.reader((out / "concepts.csv").open()))
    assert sorted(r[2] for r in rows[1:]) == ["'=cmd", "'@x"]  # the value column
    assert not any(cell.startswith(("=", "@", "+", "-")) for row in rows for cell in row)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("width", "reads 16-wide activations"),
        ("layer", "does not fit"),
        ("missing_labels", "does not label"),
        ("no_image_column", "no image column"),
        ("bad_labels_path", "expected 'toy', an image folder or a .csv file"),
        ("toy_without_world", "needs an exported toy-world split"),
        ("k", "--k"),
    ],
)
def test_cli_refuses_with_one_error_line(tiny, tmp_path, case, expect):
    acts, sae, labels = tiny / "acts", tiny / "sae", str(tiny / "imgs")
    extra: list = []
    if case == "width":
        make_sae(tmp_path / "sae16", 16, 32)
        sae = tmp_path / "sae16"
    elif case == "layer":  # an SAE trained on block 3 of the store's model, not block 0
        from vlmsae.sae import SAE, SAEConfig

        sae = tmp_path / "sae3"
        SAE(SAEConfig(d_in=8, d_sae=32, sparsity="topk", k=4, model="tiny",
                      hookpoint="post_mlp_residual", layer=3, tokens="all")).save(sae)  # fmt: skip
    elif case == "missing_labels":
        make_images(tmp_path / "other", 4)
        labels = str(tmp_path / "other")
    elif case == "no_image_column":
        (tmp_path / "l.csv").write_text("name,tag\na,b\n")
        labels = str(tmp_path / "l.csv")
    elif case == "bad_labels_path":
        labels = str(tmp_path / "nowhere")
    elif case == "toy_without_world":
        labels = "toy"
    elif case == "k":
        extra = ["--k", "1,x"]
    result = _run("--sae", sae, "--activations", acts, "--labels", labels,
                  "--out", tmp_path / "out", *extra)  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error:") and expect in lines[-1], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "summary.json").exists()


def test_cli_substitution_needs_model_and_data(tiny, tmp_path):
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels",
                  tiny / "imgs", "--out", tmp_path / "o", "--model", "x")  # fmt: skip
    assert result.exit_code == 2 and "--model and --data go together" in result.output


def test_cli_without_the_substitution_module_says_so(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vlmsae.evaluate.substitution", None)  # import fails
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels",
                  tiny / "imgs", "--out", tmp_path / "o", "--model", "m",
                  "--data", tiny / "imgs")  # fmt: skip
    assert result.exit_code == 2 and "does not have" in result.output.splitlines()[-1]


def test_cli_runs_substitution_through_its_interface(tiny, tmp_path, monkeypatch):
    """With --model and --data the command calls ``evaluate_substitution`` and writes its
    result beside the concepts (a stand-in module with the agreed interface)."""
    calls = {}

    class Result:
        def to_dict(self):
            return {"recovered": 0.75}

        def summary_lines(self):
            return ["substitution: 75% recovered"]

    def evaluate_substitution(sae, model, data, **kw):
        calls.update(sae=sae, model=model, data=data, **kw)
        return Result()

    def plot_recovered(result, path):
        Path(path).write_bytes(b"png")

    fake = types.ModuleType("vlmsae.evaluate.substitution")
    fake.evaluate_substitution, fake.plot_recovered = evaluate_substitution, plot_recovered
    monkeypatch.setitem(sys.modules, "vlmsae.evaluate.substitution", fake)
    import vlmsae.evaluate

    monkeypatch.setattr(vlmsae.evaluate, "substitution", fake, raising=False)
    out = tmp_path / "o"
    result = _run("--sae", tiny / "sae", "--activations", tiny / "acts", "--labels",
                  tiny / "imgs", "--out", out, "--model", "m", "--data", tiny / "imgs",
                  "--limit", 7, "--k", "1", "--no-baselines")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls["model"] == "m" and calls["limit"] == 7 and calls["sae"].cfg.d_sae == 32
    assert json.loads((out / "summary.json").read_text())["substitution"] == {"recovered": 0.75}
    assert (out / "recovered.png").is_file() and "75% recovered" in result.output


def test_cli_on_the_toy_world_truth(tmp_path):
    """The toy world through the real toy CLIP: its truth is the labels (--labels toy)."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders.cache import CacheConfig, cache_activations
    from vlmsae.toyworld import MODELS_DIR, export_imagefolder

    export_imagefolder(tmp_path / "world", split="test", n=48)
    cfg = CacheConfig(layers=(1,), tokens="cls", dtype="float32", workers=0, progress=False)
    cache_activations(MODELS_DIR / "clip", tmp_path / "world", tmp_path / "acts", cfg, split="test")
    acts = tmp_path / "acts" / "layer_1"
    make_sae(tmp_path / "sae", ActivationStore(acts).d, 64, k=4)
    result = _run("--sae", tmp_path / "sae", "--activations", acts, "--labels", "toy",
                  "--out", tmp_path / "out", "--k", "1,5")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out" / "concepts.csv").open()))
    sets = {r["set"] for r in rows}
    assert {"family", "shape", "color"} <= sets
    for r in rows:  # counts are the truth's
        assert 0 < int(r["n_images"]) < 48
    # without --labels the store's own split is found to be a toy-world export
    again = _run("--sae", tmp_path / "sae", "--activations", acts, "--out", tmp_path / "o2",
                 "--k", "1", "--no-baselines")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (tmp_path / "o2" / "concepts.csv").read_text().splitlines()[1:] != []


# -- label sources ----------------------------------------------------------------------


def _store_of(tmp_path: Path, paths: list[str]) -> ActivationStore:
    rows = np.zeros((len(paths), 2), np.float32)
    return ActivationStore.write(tmp_path / "acts", rows, {"model": "m"}, images=paths)


def _png(path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return str(path)


def test_inaturalist_levels_are_concept_sets(tmp_path):
    from vlmsae.data.images import TAXONOMY_LEVELS
    from vlmsae.evaluate.label_sources import load_labels

    classes = ["00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
               "00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Pica_pica",
               "00002_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina"]  # fmt: skip
    paths = [_png(tmp_path / "inat" / c / f"{i}.png") for c in classes for i in range(2)]
    labels = load_labels(_store_of(tmp_path, paths[::-1]), str(tmp_path / "inat"))
    names = labels.names
    assert "kingdom:Animalia" in names and "species:Corvus corax" in names
    present = labels.present.toarray()
    # image 0 of the store is the last path: a Rosa canina
    held = {names[c] for c in np.flatnonzero(present[0])}
    taxa = ["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa"]
    taxa.append("Rosa canina")
    assert held == {f"{level}:{t}" for level, t in zip(TAXONOMY_LEVELS, taxa, strict=True)}
    assert present[:, names.index("family:Corvidae")].sum() == 4


def test_cub_classes_and_attributes(tmp_path):
    from vlmsae.evaluate.label_sources import load_labels

    root = tmp_path / "CUB_200_2011"
    rels = ["001.Albatross/a.jpg", "001.Albatross/b.jpg", "002.Auklet/c.jpg"]
    paths = [_png(root / "images" / r) for r in rels]
    (root / "images.txt").write_text("".join(f"{i + 1} {r}\n" for i, r in enumerate(rels)))
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    (root / "attributes").mkdir()
    (root / "attributes.txt").write_text("1 has_bill_shape::curved\n2 has_bill_shape::hooked\n")
    (root / "attributes" / "image_attribute_labels.txt").write_text(
        "1 1 1 3 1.0\n1 2 0 3 1.0\n2 1 0 3 1.0\n2 2 1 3 1.0 extra\n3 1 1 4 2.0\n3 2 1 4 2.0\n"
    )
    labels = load_labels(_store_of(tmp_path, paths), str(root))
    present = labels.present.toarray()
    col = {n: present[:, i].tolist() for i, n in enumerate(labels.names)}
    assert col["class:001.Albatross"] == [True, True, False]
    assert col["has_bill_shape:curved"] == [True, False, True]
    assert col["has_bill_shape:hooked"] == [False, True, True]


def test_csv_by_image_index_and_refusals(tmp_path):
    from vlmsae.core.errors import UserError
    from vlmsae.evaluate.label_sources import load_labels

    store = _store_of(tmp_path, [str(tmp_path / f"{i}.png") for i in range(3)])
    (tmp_path / "ok.csv").write_text("index,animal\n2,cat|dog\n0,cat\n1,dog\n")
    labels = load_labels(store, str(tmp_path / "ok.csv"))
    assert labels.names == ["animal:cat", "animal:dog"]
    assert labels.present.toarray().tolist() == [[True, False], [False, True], [True, True]]
    (tmp_path / "bad.csv").write_text("index,animal\n0,cat\n5,dog\n")
    with pytest.raises(UserError, match="names image 5"):
        load_labels(store, str(tmp_path / "bad.csv"))
    (tmp_path / "short.csv").write_text("index,animal\n0,cat\n1\n")
    with pytest.raises(UserError, match="row 3 has another number of cells"):
        load_labels(store, str(tmp_path / "short.csv"))
