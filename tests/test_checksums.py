"""Corruption is detected before a number is computed from it: finite bit flips in a shard
or in SAE weights, truncated shards, ``rows.npy`` and ``sae.safetensors`` are refused with
one ``Error:`` line naming the file; ``vlmsae verify`` checks whole folders; stores and
checkpoints written before checksums still load, with one warning."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from vlmsae import SAE, SAEConfig, TrainConfig, train_sae
from vlmsae.cli import app
from vlmsae.core.checksum import CHECKSUMS, file_checksum
from vlmsae.data.store import MANIFEST, ActivationStore, StoreError, StoreWriter
from vlmsae.data.verify import verify_path
from vlmsae.sae.checkpoint import (
    CONFIG_FILE,
    STATE_TENSORS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_trainer_state,
    trainer_state_dir,
)
from vlmsae.sae.model import load_sae

SRC = str(Path(__file__).resolve().parents[1] / "src")
N, D, N_IMAGES = 120, 8, 60


def _npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _flip(path: Path, offset: int, n: int = 50, seed: int = 0) -> None:
    """Flip the lowest bit of ``n`` little-endian float32 values after ``offset``: finite
    numbers stay finite (the lowest mantissa bit), so no NaN check can see it."""
    data = bytearray(path.read_bytes())
    n_values = (len(data) - offset) // 4
    rng = np.random.default_rng(seed)
    for i in rng.choice(n_values, size=min(n, n_values), replace=False):
        data[offset + 4 * int(i)] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path, n_bytes: int = 7) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - n_bytes)


def _store(path: Path, dtype=np.float32, **kw) -> ActivationStore:
    acts = np.random.default_rng(0).normal(size=(N, D)).astype(dtype)
    image = np.repeat(np.arange(N_IMAGES), N // N_IMAGES)
    images = [f"/imgs/{i}.png" for i in range(N_IMAGES)]
    return ActivationStore.write(
        path, acts, {"layer": 1}, image_index=image, shard_rows=40, images=images, **kw
    )


def _embeddings(path: Path) -> ActivationStore:
    emb = np.random.default_rng(1).normal(size=(N_IMAGES, 5)).astype(np.float32)
    return ActivationStore.write(path, emb, kind="embeddings")


def _sae(path: Path) -> Path:
    torch.manual_seed(0)
    return SAE(SAEConfig(d_in=D, d_sae=32, sparsity="topk", k=4)).save(path)


def _safetensors_data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _one_error_line(result, *names: str) -> None:
    """Exit 2 and one ``Error:`` line naming every one of ``names``, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert all(name in errors[0] for name in names), errors[0]
    assert "Traceback" not in result.output


def _score(root: Path, acts: Path, *extra: str):
    args = ["score", "--activations", str(acts), "--embeddings", str(root / "emb")]
    return CliRunner().invoke(app, [*args, "--out", str(root / "score"), *extra])


# -- a flipped shard --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_flipped_shard_is_refused_before_any_read(tmp_path, dtype):
    store = _store(tmp_path / "acts", dtype)
    shard = store.dir / "shard-00001.npy"
    _flip(shard, _npy_data_offset(shard))
    store = ActivationStore(tmp_path / "acts")  # the headers are intact: it opens
    assert np.isfinite(np.load(shard)).all()  # the damage is invisible to a NaN check
    np.testing.assert_array_equal(store[:40].shape, (40, D))  # shard 0 is whole
    for read in (
        lambda: store[:],
        lambda: store[[0, 50]],
        lambda: list(store.batches(16, epochs=1)),
        store.to_numpy,
        store.verify,
    ):
        with pytest.raises(StoreError, match=r"shard-00001\.npy is damaged"):
            read()


def test_flipped_code_shard_is_refused(tmp_path):
    codes = sp.random(60, 16, density=0.3, format="csr", dtype=np.float32, random_state=0)
    store = ActivationStore.write(tmp_path / "codes", codes, shard_rows=20)
    values = store.dir / "shard-00002.values.npy"
    _flip(values, _npy_data_offset(values), n=5)
    with pytest.raises(StoreError, match=r"shard-00002\.values\.npy is damaged"):
        ActivationStore(store.dir)[:]


def test_cli_refuses_a_flipped_shard_in_one_line(tmp_path):
    store = _store(tmp_path / "acts")
    _embeddings(tmp_path / "emb")
    assert _score(tmp_path, store.dir).exit_code == 0  # whole: it scores
    shard = store.dir / "shard-00002.npy"
    _flip(shard, _npy_data_offset(shard))
    _one_error_line(_score(tmp_path, store.dir), "shard-00002.npy", "damaged")
    _one_error_line(CliRunner().invoke(app, ["inspect", str(store.dir)]), "shard-00002.npy")
    train = ["train", "--activations", str(store.dir), "--out", str(tmp_path / "run")]
    train += ["--steps", "2", "--batch-size", "16", "--expansion", "2", "--k", "2"]
    _one_error_line(CliRunner().invoke(app, train), "shard-00002.npy", "damaged")


def test_inspect_says_whether_checksums_were_verified(tmp_path):
    store = _store(tmp_path / "acts")
    out = CliRunner().invoke(app, ["inspect", str(store.dir)])
    assert out.exit_code == 0 and "complete: yes, checksums verified" in out.output
    _drop_checksums(store.dir / MANIFEST)
    out = CliRunner().invoke(app, ["inspect", str(store.dir)])
    assert "not verified (no checksums: written by an older vlmsae)" in out.output


# -- flipped and truncated SAE weights --------------------------------------------------------
def test_flipped_sae_weights_are_refused_on_load(tmp_path):
    path = _sae(tmp_path / "sae")
    weights = path / WEIGHTS_FILE
    _flip(weights, _safetensors_data_offset(weights), n=3)
    with pytest.raises(CheckpointError, match=r"sae\.safetensors is damaged"):
        load_sae(path)
    store = _store(tmp_path / "acts")
    _embeddings(tmp_path / "emb")
    _one_error_line(_score(tmp_path, store.dir, "--sae", str(path)), "sae.safetensors")


@pytest.mark.parametrize("checksums", [True, False])
def test_truncated_sae_weights_are_one_error(tmp_path, checksums):
    path = _sae(tmp_path / "sae")
    if not checksums:  # written by an older vlmsae: safetensors itself finds the cut
        _drop_checksums(path / CONFIG_FILE)
    _truncate(path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"sae\.safetensors is (damaged|not a readable)"):
        load_sae(path)
    store = _store(tmp_path / "acts")
    _embeddings(tmp_path / "emb")
    _one_error_line(_score(tmp_path, store.dir, "--sae", str(path)), "sae.safetensors")


def test_flipped_trainer_state_is_refused_on_resume(tmp_path):
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(0))
    sae_cfg = SAEConfig(d_in=D, d_sae=16, sparsity="topk", k=2)
    cfg = TrainConfig(sae=sae_cfg, steps=4, batch_size=32, checkpoint_every=2, progress=False)
    train_sae(x, cfg, tmp_path / "run")
    assert load_trainer_state(tmp_path / "run")[1]["step"] == 4  # whole: it loads
    state = trainer_state_dir(tmp_path / "run") / STATE_TENSORS_FILE
    _flip(state, _safetensors_data_offset(state), n=3)
    longer = TrainConfig(**{**cfg.__dict__, "steps": 6})
    with pytest.raises(CheckpointError, match=r"trainer_state\.safetensors is damaged"):
        train_sae(x, longer, tmp_path / "run", resume=True)
    report = verify_path(tmp_path / "run")
    assert not report.ok and len(report.problems) == 1 and STATE_TENSORS_FILE in report.problems[0]


# -- truncated store files --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shard-00001.npy", "rows.npy"])
@pytest.mark.parametrize("checksums", [True, False])
def test_truncated_store_file_is_one_error(tmp_path, name, checksums):
    store = _store(tmp_path / "acts")
    _embeddings(tmp_path / "emb")
    if not checksums:
        _drop_checksums(store.dir / MANIFEST)
    _truncate(store.dir / name)
    with pytest.raises(StoreError, match=rf"{name.replace('.', '[.]')} is truncated"):
        ActivationStore(store.dir)
    _one_error_line(_score(tmp_path, store.dir), name, "truncated")
    _one_error_line(CliRunner().invoke(app, ["inspect", str(store.dir)]), name)


# -- stores and checkpoints written before checksums ------------------------------------------
def _drop_checksums(json_path: Path) -> None:
    meta = json.loads(json_path.read_text())
    assert meta.pop(CHECKSUMS)
    json_path.write_text(json.dumps(meta))


def test_old_store_and_sae_load_with_one_warning(tmp_path, caplog):
    store = _store(tmp_path / "acts")
    sae_path = _sae(tmp_path / "sae")
    _drop_checksums(store.dir / MANIFEST)
    _drop_checksums(sae_path / CONFIG_FILE)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # opened twice, every shard read: still one warning
            old = ActivationStore(store.dir)
            assert old.to_numpy().shape == (N, D) and len(old.images) == N_IMAGES
        load_sae(sae_path)
        load_sae(sae_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert str(store.dir) in warnings[0] and "older vlmsae" in warnings[0]
    assert WEIGHTS_FILE in warnings[1] and "older vlmsae" in warnings[1]


# -- vlmsae verify ----------------------------------------------------------------------------
def test_verify_whole_and_damaged_folders(tmp_path):
    root = tmp_path / "all"
    _store(root / "acts")
    codes = sp.random(30, 16, density=0.3, format="csr", dtype=np.float32, random_state=0)
    ActivationStore.write(root / "codes", codes, shard_rows=10)
    _sae(root / "sae")
    ok = CliRunner().invoke(app, ["verify", str(root)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("OK: 16 files in 3 artifacts")  # 3+2 dense, 3×3+1 codes, 1
    shard = root / "acts" / "shard-00000.npy"
    _flip(shard, _npy_data_offset(shard), n=1)
    _truncate(root / "sae" / WEIGHTS_FILE)
    bad = CliRunner().invoke(app, ["verify", str(root)])
    assert bad.exit_code == 2
    lines = bad.output.splitlines()
    assert any("shard-00000.npy is damaged" in line for line in lines), bad.output
    assert any("sae.safetensors is damaged" in line for line in lines), bad.output
    assert lines[-1].startswith("NOT WHOLE: 2 problem(s)")
    _one_error_line(CliRunner().invoke(app, ["verify", str(tmp_path / "nothing")]), "nothing")


def test_verify_reports_an_old_store_as_not_verified(tmp_path):
    store = _store(tmp_path / "acts")
    _drop_checksums(store.dir / MANIFEST)
    report = verify_path(store.dir)
    assert not report.ok and report.problems == [f"{store.dir}: not verified (no checksums: "
                                                 "written by an older vlmsae)"]  # fmt: skip


# -- resume -----------------------------------------------------------------------------------
KILL_AT_SHARD = """
import os, signal, sys
import numpy as np
from vlmsae.data.store import StoreWriter
out, kill = sys.argv[1], sys.argv[2] == "kill"
real_replace, seen = os.replace, [0]
def replace(src, dst):
    real_replace(src, dst)
    if kill and str(dst).endswith("/manifest.json"):
        seen[0] += 1
        if seen[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # two shards listed, the rest not written
os.replace = replace
w = StoreWriter(out, 4, shard_rows=2, resume=True)
for i in range(w.images_done, 7):
    w.add(np.full((1, 4), i, np.float32) / 7, [i])
    w.mark(i + 1)
w.close(images=[f"{i}.png" for i in range(7)])
"""


def test_resumed_store_is_identical_with_its_checksums(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}

    def run(out: Path, mode: str) -> int:
        args = [sys.executable, "-c", KILL_AT_SHARD, str(out), mode]
        return subprocess.run(args, env=env, capture_output=True, timeout=120).returncode

    assert run(tmp_path / "whole", "run") == 0
    assert run(tmp_path / "cut", "kill") == -signal.SIGKILL
    cut = json.loads((tmp_path / "cut" / MANIFEST).read_text())
    assert not cut["complete"] and len(cut["shards"]) == 2
    assert sorted(cut[CHECKSUMS]) == ["shard-00000.npy", "shard-00001.npy"]
    assert run(tmp_path / "cut", "resume") == 0
    whole, resumed = (json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("whole", "cut"))
    assert resumed == whole and len(whole[CHECKSUMS]) == 4 + 2  # 4 shards, rows, images
    for name, checksum in whole[CHECKSUMS].items():
        assert file_checksum(tmp_path / "cut" / name) == checksum
    assert verify_path(tmp_path / "cut").ok


def test_writer_records_what_it_wrote(tmp_path):
    w = StoreWriter(tmp_path / "s", 3, shard_rows=1)
    w.add(np.ones((1, 3), np.float32), [0])
    w.mark(1)
    w.add(np.ones((1, 3), np.float32), [1])
    w.mark(2)
    store = w.close()
    assert set(store.manifest[CHECKSUMS]) == {"shard-00000.npy", "shard-00001.npy", "rows.npy"}
    assert verify_path(store.dir).n_files == 3
