"""Every multi-file output is one unit (a kill at any instant, a file copied in by hand: the
old output whole, the new one whole, or one ``Error:`` line), and no command writes over
what it did not write (another artifact, its own input) without ``--overwrite``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from explore_fixtures import make_images, make_sae, make_token_store
from vlmsae.cli import app
from vlmsae.core.errors import UserError
from vlmsae.core.lock import output_lock
from vlmsae.core.outputs import MANIFEST, read_manifest
from vlmsae.data.store import StoreWriter
from vlmsae.metrics.artifacts import read_top
from vlmsae.metrics.fit import read_scores_output

D, D_SAE, N_IMAGES = 8, 32, 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A token store of real images, its embeddings, two SAEs (A and B) and the score and
    top-images outputs of A."""
    root = tmp_path_factory.mktemp("outputs")
    paths = make_images(root / "imgs", N_IMAGES)
    make_token_store(root / "acts", paths, D)
    make_sae(root / "sae_a", D, D_SAE)
    import torch

    from vlmsae.sae import SAE, SAEConfig

    torch.manual_seed(1)
    SAE(SAEConfig(d_in=D, d_sae=D_SAE, sparsity="topk", k=4)).save(root / "sae_b")
    emb = StoreWriter(root / "emb", 6, kind="embeddings", dtype="float32")
    emb.add(np.random.default_rng(1).normal(size=(N_IMAGES, 6)).astype(np.float32),
            np.arange(N_IMAGES))  # fmt: skip
    emb.mark(N_IMAGES)
    emb.close(images=paths, n_images=N_IMAGES)
    for sae in ("a", "b"):
        ok(score_args(root, root / f"score_{sae}", root / f"sae_{sae}"))
        ok(["top-images", root / "acts", "--sae", root / f"sae_{sae}", "--k", "4",
            "--out", root / f"top_{sae}"])  # fmt: skip
    return root


def score_args(root: Path, out: Path, sae: Path) -> list:
    return ["score", "--activations", root / "acts", "--embeddings", root / "emb",
            "--sae", sae, "--out", out]  # fmt: skip


def invoke(args: list):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(args: list):
    result = invoke(args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(args: list, *needles: str):
    result = invoke(args)
    assert result.exit_code == 2, (result.output, result.exception)
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result


# The child writes an output and kills itself (SIGKILL: no cleanup runs) just before its
# N-th os.replace; with N = 0 it finishes and prints how many it made.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    kill_at, count = int(sys.argv[1]), [0]
    real = os.replace

    def replace(*args, **kwargs):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    os.replace = replace
    kind, args = sys.argv[2], json.loads(sys.argv[3])
    if kind == "score":
        from vlmsae.metrics.score_files import write_scores
        write_scores(Path(args["acts"]), Path(args["emb"]), Path(args["out"]),
                     sae=Path(args["sae"]))
    elif kind == "top":
        from vlmsae.metrics.artifacts import write_top_images
        write_top_images(Path(args["acts"]), Path(args["out"]), sae=Path(args["sae"]), k=4)
    elif kind == "explore":
        from vlmsae.explore.build import build_site
        from vlmsae.explore.site import ExploreConfig
        build_site(args["sae"], args["acts"], args["out"], cfg=ExploreConfig(heatmaps=False))
    elif kind == "label":
        from vlmsae.explore.labels import label_sae
        label_sae(args["sae"], args["acts"], args["out"], clip="toyworld", vocab="toyworld")
    elif kind == "export":
        from vlmsae.formats.export import export_output
        from vlmsae.sae import SAE
        export_output(SAE.load(args["sae"]), args["out"], args["fmt"], source=args["sae"])
    print(count[0])
    """
)


def run_child(kill_at: int, kind: str, **args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", CHILD, str(kill_at), kind, json.dumps(args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def _which(read, old, new) -> str:
    """``"old"``, ``"new"`` or ``"error"``: what a reader sees."""
    try:
        got = read()
    except UserError:
        return "error"
    assert got in (old, new), got  # never a mix
    return "old" if got == old else "new"


def _score_state(out: Path):
    s = read_scores_output(out)
    return (s.ms.tobytes(), s.summary["sae"])


def _top_state(out: Path):
    top, summary = read_top(out)
    return (top.indices.tobytes(), top.values.tobytes(), summary["sae"])


@pytest.mark.parametrize("kind", ["score", "top"])
def test_a_kill_at_any_file_leaves_the_old_output_the_new_or_an_error(inputs, tmp_path, kind):
    root = inputs
    src, other = root / f"{kind}_a", root / f"{kind}_b"
    state = _score_state if kind == "score" else _top_state
    old, new = state(src), state(other)
    assert old != new
    args = {"acts": str(root / "acts"), "emb": str(root / "emb"), "sae": str(root / "sae_b")}
    dry = run_child(0, kind, out=str(tmp_path / "dry"), **args)
    assert dry.returncode == 0, dry.stderr
    n_ops = int(dry.stdout.split()[-1])
    assert n_ops >= 4  # the marker, each file, the manifest
    seen = set()
    for n in range(1, n_ops + 1):
        out = tmp_path / f"kill{n}"
        shutil.copytree(src, out)  # the old output (SAE A), then a rerun with SAE B killed
        child = run_child(n, kind, out=str(out), **args)
        assert child.returncode == -signal.SIGKILL, (n, child.stderr)
        seen.add(_which(lambda o=out: state(o), old, new))
        if kind == "score":  # grid --scores: the same answer through the CLI
            grid = invoke(["grid", root / "top_b", "--images", root / "acts", "--scores", out,
                           "--out", tmp_path / f"g{n}.png"])  # fmt: skip
            assert grid.exit_code in (0, 2), grid.output
        if n in (1, n_ops // 2, n_ops):  # a rerun completes it (a few points: each costs)
            rerun = run_child(0, kind, out=str(out), **args)
            assert rerun.returncode == 0, rerun.stderr
            assert state(out) == new
            assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert "error" in seen and ("old" in seen or "new" in seen)


def _site_state(out: Path):
    from vlmsae.explore.cards import read_index

    return read_index(out)["meta"]["sae"]


def _label_state(out: Path):
    from vlmsae.explore.site import read_labels

    summary = json.loads((out / "summary.json").read_text())
    return read_labels(out / "labels.csv", D_SAE)[0], summary["sae"]


@pytest.mark.parametrize("kind", ["explore", "label"])
def test_a_kill_inside_a_site_or_labels_leaves_no_mix(inputs, tmp_path, kind):
    root = inputs
    state = _site_state if kind == "explore" else _label_state
    outs = {}
    for sae in ("a", "b"):
        outs[sae] = tmp_path / f"{kind}_{sae}"
        args = {"sae": str(root / f"sae_{sae}"), "acts": str(root / "acts")}
        done = run_child(0, kind, out=str(outs[sae]), **args)
        assert done.returncode == 0, done.stderr
    old, new = state(outs["a"]), state(outs["b"])
    assert old != new
    n_ops = int(done.stdout.split()[-1])
    seen = set()
    for n in sorted({1, n_ops // 2, n_ops}):  # before the marker, a file, the manifest
        out = tmp_path / f"kill{n}"
        shutil.copytree(outs["a"], out)
        child = run_child(n, kind, out=str(out), **args)
        assert child.returncode == -signal.SIGKILL, (n, child.stderr)
        seen.add(_which(lambda o=out: state(o), old, new))
    # killed before the marker: the old output; after it, until the manifest: an error
    assert seen == {"old", "error"}


def test_a_file_copied_from_another_output_is_named(inputs, tmp_path):
    root = inputs
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "score_a", mixed)
    shutil.copy(root / "score_b" / "summary.json", mixed / "summary.json")
    with pytest.raises(UserError, match=r"summary\.json does not belong to the output"):
        read_scores_output(mixed)
    refused(["grid", root / "top_a", "--images", root / "acts", "--scores", mixed,
             "--out", tmp_path / "g.png"], "summary.json", "does not belong")  # fmt: skip
    top = tmp_path / "top"
    shutil.copytree(root / "top_a", top)
    shutil.copy(root / "top_b" / "top_values.npy", top / "top_values.npy")
    refused(["uniqueness", top], "top_values.npy", "does not belong")
    refused(["hierarchy", top, "--images", root / "acts"], "top_values.npy")


def test_an_output_without_manifest_loads_with_one_warning(inputs, tmp_path, caplog):
    legacy = tmp_path / "legacy"
    shutil.copytree(inputs / "score_a", legacy)
    (legacy / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        got = read_scores_output(legacy)
        read_scores_output(legacy)
    assert got.summary["sae"] == str(inputs / "sae_a")
    warnings = [r for r in caplog.records if MANIFEST in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    # ... and a rerun of the same command may write into it (only its own file names)
    ok(score_args(inputs, legacy, inputs / "sae_b"))
    assert read_manifest(legacy)["complete"]


def test_explore_refuses_scores_and_labels_of_another_sae(inputs, tmp_path):
    root = inputs
    refused(["explore", "--sae", root / "sae_a", "--activations", root / "acts", "--out",
             tmp_path / "site", "--scores", root / "score_b", "--no-heatmaps"],
            "different neurons")  # fmt: skip
    assert not (tmp_path / "site").exists()  # refused before anything was written
    ok(["explore", "--sae", root / "sae_a", "--activations", root / "acts", "--out",
        tmp_path / "site", "--scores", root / "score_a", "--no-heatmaps"])  # fmt: skip
    site = tmp_path / "site"
    manifest = read_manifest(site)
    assert manifest["complete"] and "data/index.js" in manifest["files"]
    ok(["explore", "--out", site, "--cards", "0"])  # a built site is read back, checked
    shard = site / "data" / "neurons" / "00000.js"
    shard.write_text(shard.read_text().replace("[", "[ ", 1))  # changed by hand
    refused(["explore", "--out", site, "--cards", "0"], "00000.js does not belong")
    (site / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    refused(["explore", "--out", site, "--serve"], "incomplete", "interrupted")


def test_no_command_writes_over_what_it_did_not_write(inputs, tmp_path):
    root = inputs
    # the input itself, even with --overwrite
    refused([*score_args(root, root / "sae_a", root / "sae_a"), "--overwrite"], "is the input")
    refused(["export", root / "sae_a", "--format", "dictionary_learning", "--out",
             root / "sae_a"], "is the input")  # fmt: skip
    from vlmsae.sae import SAE

    SAE.load(root / "sae_a")  # still loads
    # another command's output; a folder of a user's files
    refused(score_args(root, root / "top_a", root / "sae_a"), "vlmsae top-images")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused(["top-images", root / "acts", "--out", mine], "notes.txt", "--overwrite")
    ok(["top-images", root / "acts", "--out", mine, "--overwrite"])
    assert (mine / "notes.txt").read_text() == "mine"  # written beside, never removed
    # a run (train output) is not a convert's or an export's folder
    run = tmp_path / "run"
    shutil.copytree(root / "sae_a", run)
    (run / "summary.json").write_text("{}")
    ae = tmp_path / "dl"
    ok(["export", root / "sae_a", "--format", "dictionary_learning", "--out", ae])
    refused(["convert", ae / "ae.pt", "--out", run], "summary.json")
    refused(["export", root / "sae_a", "--format", "saelens", "--out", run], "summary.json")
    # train has its own rules (--resume), but never writes into another output or a store
    refused(["train", "--activations", root / "acts", "--out", root / "score_a", "--steps", "1"],
            "the output of `vlmsae score`")  # fmt: skip
    refused(["train", "--activations", root / "acts", "--out", root / "emb", "--steps", "1"],
            "an activation store")  # fmt: skip
    # the same command into its own output: allowed, and the old files it does not write go
    ok(["export", root / "sae_a", "--format", "saelens", "--out", ae])
    assert sorted(read_manifest(ae)["files"]) == ["cfg.json", "sae_weights.safetensors"]
    assert not (ae / "ae.pt").exists()


def test_export_takes_the_output_lock(inputs, tmp_path):
    out = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "vlmsae", "export", str(inputs / "sae_a"), "--format",
           "saelens", "--out", str(out)]  # fmt: skip
    with output_lock(out, "a test"):
        child = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert child.returncode == 2, child.stderr
    assert "is being written by pid" in child.stderr and "Traceback" not in child.stderr
    assert not (out / MANIFEST).exists()


def test_a_kill_inside_an_export_leaves_no_mix(inputs, tmp_path):
    args = {"sae": str(inputs / "sae_a"), "fmt": "saelens"}
    dry = run_child(0, "export", out=str(tmp_path / "dry"), **args)
    assert dry.returncode == 0, dry.stderr
    for n in range(1, int(dry.stdout.split()[-1]) + 1):
        out = tmp_path / f"kill{n}"
        child = run_child(n, "export", out=str(out), **args)
        assert child.returncode == -signal.SIGKILL
        manifest = read_manifest(out)
        assert manifest is None or not manifest["complete"] or n == int(dry.stdout.split()[-1])


def test_empty_and_one_image_stores_are_refused_before_writing(inputs, tmp_path):
    root = inputs
    empty = StoreWriter(tmp_path / "empty", D, kind="activations", dtype="float32",
                        meta={"model": "tiny", "hookpoint": "post_mlp_residual", "layer": 0,
                              "tokens": "all"})  # fmt: skip
    empty.close(images=[], n_images=0)
    refused(["score", "--activations", tmp_path / "empty", "--embeddings", root / "emb",
             "--out", tmp_path / "s"], "0 rows")  # fmt: skip
    refused(["top-images", tmp_path / "empty", "--out", tmp_path / "t"], "0 rows")
    refused(["explore", "--sae", root / "sae_a", "--activations", tmp_path / "empty",
             "--out", tmp_path / "e"], "0 rows")  # fmt: skip
    one = make_images(tmp_path / "one_img", 1)
    make_token_store(tmp_path / "one", one, D)
    refused(
        [
            "label",
            "--sae",
            root / "sae_a",
            "--activations",
            tmp_path / "one",
            "--out",
            tmp_path / "l",
            "--clip",
            "toyworld",
            "--vocab",
            "toyworld",
        ],
        "at least 2 images",
    )
    for name in "stel":
        assert not (tmp_path / name).exists(), name


def test_score_and_top_images_take_a_saelens_folder(inputs, tmp_path):
    root = inputs
    ok(["export", root / "sae_a", "--format", "saelens", "--out", tmp_path / "lens"])
    ok(score_args(root, tmp_path / "s", tmp_path / "lens"))
    np.testing.assert_allclose(read_scores_output(tmp_path / "s").ms,
                               read_scores_output(root / "score_a").ms, rtol=1e-5)  # fmt: skip
    ok(["top-images", root / "acts", "--sae", tmp_path / "lens", "--k", "4",
        "--out", tmp_path / "t"])  # fmt: skip
    assert np.array_equal(
        read_top(tmp_path / "t").top.indices, read_top(root / "top_a").top.indices
    )
    # and the SAE's identity is checked across them
    refused(["grid", tmp_path / "t", "--images", root / "acts", "--scores", root / "score_b",
             "--out", tmp_path / "g.png"], "different neurons")  # fmt: skip


def test_a_vocabulary_line_longer_than_the_text_tower_is_cut_with_a_warning(
    inputs, tmp_path, caplog
):
    root = inputs
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("circle\nsquare\n" + " ".join(["very long words"] * 200) + "\n")
    result = ok(["label", "--sae", root / "sae_a", "--activations", root / "acts", "--out",
                 tmp_path / "l", "--clip", "toyworld", "--vocab", vocab])  # fmt: skip
    assert "indexing errors" not in result.output  # the tokenizer's own warning is not shown
    assert "longer than the text tower's 16 positions" in caplog.text
    assert read_manifest(tmp_path / "l")["complete"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), or a skip where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def fill(disk: Path, leave_pages: int) -> None:
    """Fill ``disk`` and give back ``leave_pages`` pages (4 KiB) of it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * 4096))


@pytest.mark.parametrize("leave_pages", [0, 1, 3, 12])
def test_score_on_a_full_disk_is_one_line_and_leaves_no_mix(inputs, small_disk, leave_pages):
    root, out = inputs, small_disk / "score"
    ok(score_args(root, out, root / "sae_a"))
    old = _score_state(out)
    fill(small_disk, leave_pages)
    refused(score_args(root, out, root / "sae_b"), "the disk is full")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _which(lambda: _score_state(out), old, None) in ("old", "error")
    (small_disk / "filler").unlink()
    ok(score_args(root, out, root / "sae_b"))  # space freed: the rerun completes it
    assert _score_state(out) == _score_state(root / "score_b")


@pytest.mark.parametrize("leave_pages", [0, 2, 6])
def test_train_on_a_full_disk_is_one_line(small_disk, leave_pages):
    from test_train_faults import config
    from vlmsae.train.run import train_sae

    x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    fill(small_disk, leave_pages)
    with pytest.raises(UserError, match="the disk is full") as err:
        train_sae(x, config(), small_disk / "run")
    assert "\n" not in str(err.value)
    debris = [p for p in (small_disk / "run").rglob("*") if p.name.endswith(".tmp")]
    assert not debris


def test_a_few_huge_rows_are_reported_beside_r2(caplog):
    import torch

    from vlmsae.train.losses import dominance_warning, variance_metrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8))
    x[:10] *= 1e6  # 1 % of the rows
    x_hat = x.copy()
    x_hat[10:] = 0  # only the huge rows are reconstructed
    m = variance_metrics(torch.tensor(x), torch.tensor(x_hat))
    assert m["r2"] > 0.99 and m["row_r2_median"] < 0.1  # R² hides the other 99 %
    assert m["top_rows_var_share"] > 0.99
    assert "median per-row R²" in dominance_warning(m)
    plain = variance_metrics(torch.tensor(x[10:]), torch.tensor(x[10:] * 0.9))
    assert dominance_warning(plain) is None and plain["row_r2_median"] == pytest.approx(
        0.99, abs=0.02
    )


def test_training_on_a_few_huge_rows_warns(tmp_path, caplog):
    import torch

    from test_train_faults import config
    from vlmsae.train.run import train_sae

    x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    x[:4] *= 1e6  # 1 % of the rows
    with caplog.at_level(logging.WARNING):
        train_sae(torch.tensor(x), config(), tmp_path / "run", val=torch.tensor(x))
    assert "a few rows dominate the variance" in caplog.text
    val = json.loads((tmp_path / "run" / "summary.json").read_text())["val"]
    assert val["top_rows_var_share"] > 0.5 and "row_r2_median" in val
