"""One writer per output directory: a second `cache` on the same --out is refused naming the
first, the first finishes intact, and a lock held by a killed process is free again."""

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

from tiny_models import clip_processor, make_clip_full, random_images
from vlmsae.core.errors import UserError
from vlmsae.core.lock import LOCK_FILE, lock_until_exit, output_lock
from vlmsae.data.store import ActivationStore

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)
TIMEOUT = 240  # seconds for one subprocess step (a torch import on a busy 2-core machine)
N_IMAGES = 12

# Process 1: a real `cache_activations` that stops after its first batch until told to go on.
PAUSED_CACHE = """
import sys, time
from pathlib import Path
import vlmsae.encoders.cache as cache
import vlmsae.encoders.cache_loop as loop
from vlmsae.encoders import Encoder
model_dir, data, out, marker, go = sys.argv[1:]
write_batch = loop._write_batch
def paused(*args, **kwargs):
    write_batch(*args, **kwargs)
    if not Path(marker).exists():
        Path(marker).write_text("writing")
        deadline = time.time() + 200
        while not Path(go).exists() and time.time() < deadline:
            time.sleep(0.05)
loop._write_batch = paused
cfg = cache.CacheConfig(layers=(1,), batch_size=4, workers=0, dtype="float32", shard_rows=4,
                        progress=False)
cache.cache_activations(Encoder.from_pretrained(model_dir), data, out, cfg)
print("done")
"""

HOLD = """
import sys, time
from vlmsae.core.lock import lock_until_exit
lock_until_exit(sys.argv[1], "vlmsae test-holder")
print("locked", flush=True)
time.sleep(200)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process 1 ended early: {proc.communicate()}")
        assert time.time() < deadline, "process 1 never reached its first batch"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    model_dir = root / "model"
    make_clip_full(4).save_pretrained(model_dir)
    clip_processor().save_pretrained(model_dir)
    data = root / "imgs"
    data.mkdir()
    for i, im in enumerate(random_images(N_IMAGES)):
        im.save(data / f"{i:02d}.png")
    return model_dir, data


def test_second_cache_on_same_out_is_refused_and_first_is_intact(model_and_data, tmp_path):
    model_dir, data = model_and_data
    out, marker, go = tmp_path / "out", tmp_path / "marker", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CACHE, str(model_dir), str(data), str(out), str(marker),
         str(go)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(marker, first)
        second = subprocess.run(
            [sys.executable, "-m", "vlmsae", "cache", "--model", str(model_dir), "--data",
             str(data), "--out", str(out), "--layer", "1", "--workers", "0", "--device", "cpu",
             "--resume"],
            env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        error = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1, second.stderr
        assert f"is being written by pid {first.pid} on host " in error[0]
        assert "(vlmsae cache, since " in error[0] and "choose another --out" in error[0]
    finally:
        go.write_text("go")
        stdout, stderr = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0 and "done" in stdout, stderr
    store = ActivationStore(out / "layer_1")
    assert len(store) == N_IMAGES and store.manifest["complete"]
    np.testing.assert_array_equal(store.rows[:, 0], np.arange(N_IMAGES))
    assert store.images == [str(p) for p in sorted(data.iterdir())]
    assert np.isfinite(store.to_numpy()).all()


def test_lock_of_a_killed_holder_is_free(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as refused, output_lock(out, "vlmsae cache"):
            pass
        message = str(refused.value)
        assert f"{out} is being written by pid {holder.pid} on host " in message
        assert "(vlmsae test-holder, since " in message
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel drops the lock
        holder.wait(timeout=TIMEOUT)
    info = json.loads((out / LOCK_FILE).read_text())
    assert info["pid"] == holder.pid  # the dead holder's record is still there ...
    with output_lock(out, "vlmsae cache"):  # ... but the lock is free
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "vlmsae cache"
        with output_lock(out / "." / "", "nested"):  # re-entrant in one process
            pass
        assert (out / LOCK_FILE).read_text()  # still held after the nested block
    assert (out / LOCK_FILE).read_text() == ""  # released: no holder recorded


def test_lock_until_exit_survives_nested_release(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "outer"):
        lock_until_exit(out, "vlmsae score")
    probe = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(200)", ""), str(out)],
        env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert probe.returncode != 0 and f"pid {os.getpid()}" in probe.stderr


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    real_flock = fcntl.flock

    def no_locks(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with output_lock(tmp_path / "out", "vlmsae cache"):
        assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "the file system cannot lock" in caplog.text
