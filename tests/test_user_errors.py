"""User mistakes end as one ``Error:`` line with exit code 2 (no traceback), and artifacts
that do not fit together are refused before anything is computed (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import vlmsae
from vlmsae.cli import app
from vlmsae.core.errors import UserError
from vlmsae.data.provenance import image_fingerprint
from vlmsae.data.store import ActivationStore

runner = CliRunner()
N = 12  # images per store
SRC = str(Path(vlmsae.__file__).resolve().parents[1])


def _source(layer: int) -> dict:
    return {"model": "toy-clip", "hookpoint": "post_mlp_residual", "layer": layer, "tokens": "cls"}


def _paths(root: Path, split: str) -> list[str]:
    return [str(root / split / f"class{i % 3}" / f"{i}.png") for i in range(N)]


def _sae(path: Path, d_in: int, seed: int, **source) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = vlmsae.SAEConfig(d_in=d_in, d_sae=16, sparsity="topk", k=2, **source)
    return vlmsae.SAE(cfg).save(path)


def _ok(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """Tiny stores (train / test images, layers 2 and 4, an old one without images), SAEs,
    a training run, and top images / scores of one SAE and a second one."""
    root = tmp_path_factory.mktemp("w")
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(N, 8)).astype(np.float32)
    train, test = _paths(root, "train"), _paths(root, "test")
    p = {name: root / name for name in ("acts4", "acts2", "acts4_test", "emb", "emb_test")}

    def data(split):
        return {"dataset_root": str(root), "split": split}

    ActivationStore.write(p["acts4"], acts, {**_source(4), **data("train")}, images=train)
    ActivationStore.write(p["acts2"], acts, {**_source(2), **data("train")}, images=train)
    ActivationStore.write(p["acts4_test"], acts, {**_source(4), **data("test")}, images=test)
    emb = rng.normal(size=(N, 5)).astype(np.float32)
    ActivationStore.write(p["emb"], emb, data("train"), kind="embeddings", images=train)
    ActivationStore.write(p["emb_test"], emb, data("test"), kind="embeddings", images=test)
    p["acts_old"] = root / "acts_old"  # written before fingerprints: no image list
    ActivationStore.write(p["acts_old"], acts, _source(4))
    p["emb_old_short"] = root / "emb_old_short"
    ActivationStore.write(p["emb_old_short"], emb[:10], kind="embeddings")
    p["emb_old"] = root / "emb_old"
    ActivationStore.write(p["emb_old"], emb, kind="embeddings")
    p["codes"] = root / "codes"
    ActivationStore.write(p["codes"], sp.random(N, 16, density=0.2, format="csr", random_state=0))
    p["sae4"] = _sae(root / "sae4", 8, 0, **_source(4))
    p["sae4b"] = _sae(root / "sae4b", 8, 1, **_source(4))
    p["sae_d5"] = _sae(root / "sae_d5", 5, 0, **_source(4))
    p["run"] = root / "run"
    _ok("train", "--activations", p["acts4"], "--out", p["run"], "--steps", "2",
        "--batch-size", "4", "--expansion", "2", "--k", "2", "--warmup-steps", "1")  # fmt: skip
    p["top"], p["scores_b"] = root / "top", root / "scores_b"
    _ok("top-images", p["acts4"], "--sae", p["sae4"], "--k", "4", "--out", p["top"])
    _ok("score", "--activations", p["acts4"], "--embeddings", p["emb"], "--sae", p["sae4b"],
        "--out", p["scores_b"])  # fmt: skip
    p["clip"] = vlmsae.toyworld.clip_path()
    p["toy"] = root / "toy"
    _ok("toyworld", "export", p["toy"], "--split", "test", "--n", "4")
    p["image"] = next((p["toy"] / "test").rglob("*.png"))
    p["sae_toy4"] = _sae(root / "sae_toy4", 128, 0, **{**_source(4), "model": str(p["clip"])})
    return p


def _train(w, *extra):
    return ["train", "--activations", w["acts4"], "--out", w["acts4"].parent / "new", *extra]


def _train_run(w, *extra):
    """``train`` into the fixture's existing run (2 steps, batch 4)."""
    base = ["train", "--activations", w["acts4"], "--out", w["run"]]
    return [*base, "--steps", "2", "--batch-size", "4", *extra]


# (case, command line, what the one Error: line says)
CASES = [
    (
        "score: activations of train, embeddings of test (same row count)",
        lambda w: [
            "score",
            "--activations",
            w["acts4"],
            "--embeddings",
            w["emb_test"],
            "--out",
            w["top"].parent / "s1",
        ],  # fmt: skip
        "do not hold the same images in the same order",
    ),
    (
        "score: SAE of block 4 on a block-2 store",
        lambda w: [
            "score",
            "--activations",
            w["acts2"],
            "--embeddings",
            w["emb"],
            "--sae",
            w["sae4"],
            "--out",
            w["top"].parent / "s2",
        ],  # fmt: skip
        "layer 4 vs 2",
    ),
    (
        "top-images: SAE of block 4 on a block-2 store",
        lambda w: ["top-images", w["acts2"], "--sae", w["sae4"], "--out", w["top"].parent / "t2"],
        "layer 4 vs 2",
    ),
    (
        "cache --sae: SAE of block 4 on block 2",
        lambda w: [
            "cache",
            "--model",
            w["clip"],
            "--data",
            w["toy"],
            "--split",
            "test",
            "--layer",
            "2",
            "--sae",
            w["sae_toy4"],
            "--sae-hookpoint",
            "2",
            "--workers",
            "0",
            "--out",
            w["top"].parent / "c2",
        ],  # fmt: skip
        "layer 4 vs 2",
    ),
    (
        "grid --images of another store",
        lambda w: ["grid", w["top"], "--images", w["acts4_test"], "--out", w["top"] / "g.png"],
        "do not hold the same images in the same order",
    ),
    (
        "grid --scores of another SAE",
        lambda w: [
            "grid",
            w["top"],
            "--images",
            w["acts4"],
            "--scores",
            w["scores_b"] / "scores.npy",
            "--out",
            w["top"] / "g.png",
        ],  # fmt: skip
        "are about different neurons",
    ),
    (
        "hierarchy --images of another store",
        lambda w: ["hierarchy", w["top"], "--images", w["acts4_test"]],
        "do not hold the same images in the same order",
    ),
    (
        "hierarchy --images of an old store that lacks those images (was an IndexError)",
        lambda w: ["hierarchy", w["top"], "--images", w["emb_old"]],
        "point at image 11 but --images",
    ),
    (
        "hierarchy --sae other than the top images' SAE",
        lambda w: ["hierarchy", w["top"], "--images", w["acts4"], "--sae", w["sae4b"]],
        "are about different neurons",
    ),
    (
        "ms-table on a folder that is not score output",
        lambda w: ["ms-table", w["scores_b"], w["top"]],
        "is not an output directory of `vlmsae score`",
    ),
    (
        "a model folder that does not exist",
        lambda w: [
            "embed",
            "--model",
            w["top"].parent / "no-such-model",
            "--data",
            w["toy"],
            "--split",
            "test",
            "--workers",
            "0",
            "--out",
            w["top"].parent / "e",
        ],  # fmt: skip
        "does not exist",
    ),
    (
        "SAE d_in differs from the store width",
        lambda w: [
            "score",
            "--activations",
            w["emb"],
            "--embeddings",
            w["emb"],
            "--sae",
            w["sae4"],
            "--out",
            w["top"].parent / "s3",
        ],  # fmt: skip
        "reads 8-wide activations (d_in) but",
    ),
    (
        "embedding and activation row counts differ",
        lambda w: [
            "score",
            "--activations",
            w["acts_old"],
            "--embeddings",
            w["emb_old_short"],
            "--out",
            w["top"].parent / "s4",
        ],  # fmt: skip
        "has 12 images but",
    ),
    ("train --steps 0", lambda w: _train(w, "--steps", "0"), "steps must be positive"),
    ("train --k 0", lambda w: _train(w, "--k", "0"), "positive k"),
    ("train --k > d_sae", lambda w: _train(w, "--k", "999", "--expansion", "2"), "d_sae=16"),
    (
        "train: bad group fractions",
        lambda w: _train(w, "--arch", "matryoshka", "--group-fractions", "0.5,0.6"),
        "sum to 1",
    ),
    ("train: oversized batch", lambda w: _train(w, "--batch-size", "999"), "larger than the 12"),
    (
        "train into an existing run without --resume",
        lambda w: _train_run(w),
        "already holds a training run",
    ),
    (
        "train --resume with a changed config",
        lambda w: _train_run(w, "--expansion", "2", "--k", "3", "--resume"),
        "cannot resume",
    ),
    (
        "train on a code store",
        lambda w: ["train", "--activations", w["codes"], "--out", w["top"].parent / "r2"],
        "holds SAE codes",
    ),
    (
        "score --aggregate median",
        lambda w: [
            "score",
            "--activations",
            w["acts4"],
            "--embeddings",
            w["emb"],
            "--out",
            w["top"].parent / "s5",
            "--aggregate",
            "median",
        ],  # fmt: skip
        "'median' is not one of 'max', 'mean'",
    ),
    (
        "grid --neurons 9999",
        lambda w: [
            "grid",
            w["top"],
            "--images",
            w["acts4"],
            "--neurons",
            "9999",
            "--out",
            w["top"] / "g.png",
        ],  # fmt: skip
        "neuron 9999 does not exist",
    ),
    (
        "steer given a CLIP model",
        lambda w: [
            "steer",
            "--model",
            w["clip"],
            "--sae",
            w["sae_toy4"],
            "--image",
            w["image"],
            "--prompt",
            "What?",
            "--neuron",
            "1",
            "--alpha",
            "3",
        ],  # fmt: skip
        "is a clip model, not a LLaVA",
    ),
]


def _assert_one_error_line(result, expected: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.output
    return errors[0]


@pytest.mark.parametrize(("case", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2(w, case, argv, expected):
    args = [str(a) for a in argv(w)]
    outs = [a for a in args if a.startswith(str(w["top"].parent))]
    before = {a: Path(a).exists() for a in outs}
    result = runner.invoke(app, args)
    _assert_one_error_line(result, expected)
    created = [a for a in outs if Path(a).exists() and not before[a]]
    assert not created, f"a refused command wrote {created}"


def test_allow_mismatch_warns_and_records_what_it_combined(w, tmp_path, caplog):
    args = ["score", "--activations", w["acts2"], "--embeddings", w["emb"], "--sae", w["sae4"]]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path, "--allow-mismatch"]])
    assert result.exit_code == 0, result.output
    assert "layer 4 vs 2" in caplog.text and "--allow-mismatch" in caplog.text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["artifact"] == "scores" and summary["neurons"]["n_neurons"] == 16
    assert summary["images"] == {
        "store": str(w["acts2"]),
        "dataset_root": str(w["acts2"].parent),
        "split": "train",
        **image_fingerprint(_paths(w["acts2"].parent, "train")),
    }


def test_old_artifacts_without_fingerprints_load_with_a_warning(w, tmp_path, caplog):
    args = ["score", "--activations", w["acts_old"], "--embeddings", w["emb_old"]]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path]])
    assert result.exit_code == 0, result.output
    warnings = [r for r in caplog.records if "no image fingerprint" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


def test_artifacts_record_their_provenance(w):
    manifest = ActivationStore(w["acts4"]).manifest
    assert (
        manifest["images_sha256"]
        == image_fingerprint(_paths(w["acts4"].parent, "train"))["images_sha256"]
    )
    config = json.loads((w["run"] / "config.json").read_text())
    assert config["source"]["layer"] == 4 and config["source"]["split"] == "train"
    assert config["source"]["images_sha256"] == manifest["images_sha256"]
    top = json.loads((w["top"] / "summary.json").read_text())
    assert top["artifact"] == "top_images" and top["images"]["split"] == "train"
    assert top["neurons"]["sae_sha256"] and top["neurons"]["n_neurons"] == 16


def test_image_fingerprint_is_ordered_and_ignores_how_the_root_was_written(tmp_path):
    rel = [os.path.relpath(tmp_path / "a.png"), os.path.relpath(tmp_path / "b.png")]
    absolute = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert image_fingerprint(rel) == image_fingerprint(absolute)
    assert image_fingerprint(absolute[::-1]) != image_fingerprint(absolute)
    assert image_fingerprint(absolute)["n_images"] == 2


def test_debug_shows_the_traceback_of_a_user_error(w):
    args = [str(a) for a in _train(w, "--steps", "0")]
    result = runner.invoke(app, ["--debug", *args])
    assert isinstance(result.exception, UserError) and result.exit_code == 1
    result = runner.invoke(app, args, env={"VLMSAE_DEBUG": "1"})
    assert isinstance(result.exception, UserError)


def test_a_bug_keeps_its_traceback(w, monkeypatch):
    import vlmsae.metrics.fit

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(vlmsae.metrics.fit, "check_top_inputs", broken)
    result = runner.invoke(app, ["top-images", str(w["acts4"]), "--out", str(w["top"] / "x")])
    assert isinstance(result.exception, KeyError) and "Error:" not in result.stderr


def _vlmsae(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "vlmsae", *args], capture_output=True,
                          text=True, env=environ, timeout=120)  # fmt: skip


def test_hub_id_while_offline_is_one_line_in_a_real_process(w, tmp_path):
    done = _vlmsae("embed", "--model", "some-org/some-model", "--data", str(w["toy"]),
                   "--split", "test", "--workers", "0", "--out", str(tmp_path / "e"),
                   HF_HUB_OFFLINE="1")  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("Error:")]
    assert errors == [
        "Error: model 'some-org/some-model' not found locally and the hub is unreachable; "
        "pass a local folder"
    ]
    assert "Traceback" not in done.stderr and not (tmp_path / "e").exists()


def test_a_hub_id_the_hub_does_not_know_is_told_apart_from_being_offline():
    from huggingface_hub.errors import RepositoryNotFoundError

    from vlmsae.encoders.hub import not_found_message

    def loading_error(cause: Exception) -> OSError:
        try:
            try:
                raise cause
            except Exception as e:
                raise OSError("could not load") from e
        except OSError as e:
            return e

    response = SimpleNamespace(headers={}, request=None)  # what the error reads of a response
    missing = loading_error(RepositoryNotFoundError("404", response=response))
    assert "neither a local folder nor a model on the hub" in not_found_message(
        "a/b", None, missing
    )
    offline = loading_error(ConnectionError("no network"))
    assert not_found_message("a/b", None, offline) == (
        "model 'a/b' not found locally and the hub is unreachable; pass a local folder"
    )
    bad_rev = OSError("v9 is not a valid git identifier (branch name, tag name or commit id)")
    assert "has no revision 'v9'" in not_found_message("a/b", "v9", bad_rev)


def test_score_of_a_single_image_is_one_line(tmp_path):
    images = _paths(tmp_path, "train")[:1]
    ActivationStore.write(tmp_path / "acts", np.ones((1, 4), np.float32), images=images)
    ActivationStore.write(tmp_path / "emb", np.ones((1, 3), np.float32), images=images)
    argv = ["score", "--activations", tmp_path / "acts", "--embeddings", tmp_path / "emb"]
    result = runner.invoke(app, [str(a) for a in [*argv, "--out", tmp_path / "out"]])
    _assert_one_error_line(result, "needs at least 2 images, got 1")
