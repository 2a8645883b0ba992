"""Ctrl-C and a scheduler's SIGTERM save and say how to go on: real signals to real
`vlmsae cache` processes; the resumed store equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tiny_models import random_images
from vlmsae.data.store import ActivationStore

N_IMAGES = 120


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    for i, im in enumerate(random_images(N_IMAGES)):
        im.save(folder / f"{i:04d}.png")
    return folder


def _cache_args(images: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "vlmsae", "cache", "--model", "toyworld", "--data", str(images),
            "--out", str(out), "--layer", "1", "--tokens", "cls", "--batch-size", "2",
            "--workers", str(workers), "--shard-rows", "8", "--device", "cpu"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "VLMSAE_PROGRESS": "log", "OMP_NUM_THREADS": "1"}


def _wait_for_shards(manifest: Path, proc: subprocess.Popen, n: int = 2, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists():
            try:
                if len(json.loads(manifest.read_text())["shards"]) >= n:
                    return
            except (json.JSONDecodeError, KeyError):
                pass  # being replaced: read it again
        time.sleep(0.05)
    raise AssertionError(f"no {n} shards in {manifest} in time (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("ref") / "acts"
    run = subprocess.run(_cache_args(images, out, 0), env=_env(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return ActivationStore(out / "layer_1")


@pytest.mark.parametrize(
    ("sig", "code", "workers"), [(signal.SIGTERM, 143, 0), (signal.SIGINT, 130, 2)]
)
def test_a_signal_saves_the_shard_and_resume_finishes_the_same_store(
    images, reference, tmp_path, sig, code, workers
):
    out = tmp_path / "acts"
    proc = subprocess.Popen(_cache_args(images, out, workers), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        _wait_for_shards(out / "layer_1" / "manifest.json", proc)
        os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C or a scheduler does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if "interrupted at image" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{signal.Signals(sig).name}: interrupted at")
    assert lines[0].endswith("; continue with --resume") and "Traceback" not in stderr
    manifest = json.loads((out / "layer_1" / "manifest.json").read_text())
    done = manifest["shards"][-1]["images_end"]
    assert not manifest["complete"] and 0 < done < N_IMAGES
    assert f"interrupted at image {done} of {N_IMAGES}" in lines[0]  # nothing done was lost
    resumed = subprocess.run([*_cache_args(images, out, 0), "--resume"], env=_env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    store = ActivationStore(out / "layer_1")
    np.testing.assert_array_equal(store.to_numpy(), reference.to_numpy())
    np.testing.assert_array_equal(store.rows, reference.rows)


def test_a_second_signal_stops_at_once():
    from vlmsae.core.interrupt import graceful_stop

    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _store(path: Path, seed: int, n: int = 2048, d: int = 16) -> Path:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    meta = {"model": "m", "hookpoint": "post_mlp_residual", "layer": 1, "tokens": "cls"}
    ActivationStore.write(path, x, meta=meta, images=[f"/img/{seed}/{i}.png" for i in range(n)])
    return path


def _train_args(store: Path, out: Path, steps: int = 4000) -> list[str]:
    return [sys.executable, "-m", "vlmsae", "train", "--activations", str(store), "--out",
            str(out), "--expansion", "4", "--k", "4", "--steps", str(steps), "--batch-size", "64",
            "--log-every", "50", "--checkpoint-every", "100000", "--warmup-steps", "10",
            "--threshold-start-step", "10"]  # fmt: skip


def test_sigterm_checkpoints_training_and_resume_ends_bit_identical(tmp_path):
    from safetensors.numpy import load_file

    store = _store(tmp_path / "acts", 0)
    ref = subprocess.run(_train_args(store, tmp_path / "ref"), env=_env(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_args(store, out), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / "metrics.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    line = [x for x in stderr.splitlines() if "interrupted at step" in x]
    assert len(line) == 1 and line[0].startswith("SIGTERM: interrupted at step ")
    assert line[0].endswith(" of 4000; continue with --resume") and "Traceback" not in stderr
    step = int(line[0].split("interrupted at step ")[1].split()[0])
    pointer = json.loads((out / "checkpoint.json").read_text())
    state = json.loads((out / pointer["dir"] / "trainer_state.json").read_text())
    assert 0 < state["step"] == step < 4000  # the step it stopped at is saved: nothing lost
    resumed = subprocess.run([*_train_args(store, out), "--resume"], env=_env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(out / "sae.safetensors"), load_file(tmp_path / "ref" / "sae.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_on_a_store_cached_again_is_refused(tmp_path, caplog):
    import logging

    from vlmsae.core.errors import UserError
    from vlmsae.sae import SAEConfig
    from vlmsae.train import TrainConfig, train_sae

    store = _store(tmp_path / "acts", 0)
    cfg = TrainConfig(sae=SAEConfig(d_in=16, d_sae=32, sparsity="topk", k=2), steps=8,
                      batch_size=64, checkpoint_every=4, progress=False)  # fmt: skip
    train_sae(store, cfg, tmp_path / "run")
    longer = TrainConfig(**{**cfg.__dict__, "steps": 12})
    import shutil

    shutil.rmtree(store)
    _store(store, 1)  # the same path, other rows and images
    with pytest.raises(UserError, match="is not the data the run in .* was trained on"):
        train_sae(store, longer, tmp_path / "run", resume=True)
    with caplog.at_level(logging.WARNING):
        train_sae(store, longer, tmp_path / "run", resume=True, allow_mismatch=True)
    assert "resuming anyway (--allow-mismatch)" in caplog.text
