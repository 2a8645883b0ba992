"""A training run killed (SIGKILL) at any file operation of a checkpoint resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vlmsae.core.errors import UserError
from vlmsae.sae import SAE, SAEConfig
from vlmsae.train import TrainConfig
from vlmsae.train.run import train_sae

STEPS, EVERY = 6, 3

# The child trains and kills itself (SIGKILL: no cleanup runs) just before its N-th file
# operation; with N = 0 it finishes and prints the operations it made, in order.
CHILD = textwrap.dedent(
    """
    import os, pathlib, shutil, signal, sys, tempfile
    import numpy as np
    import vlmsae.sae.checkpoint as ck
    sys.path.insert(0, sys.argv[3])
    from test_train_faults import config

    kill_at, ops = int(sys.argv[2]), []

    def hook(name, fn):
        def wrapped(*args, **kwargs):
            ops.append(name)
            if len(ops) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    os.replace = hook("replace", os.replace)
    shutil.rmtree = hook("rmtree", shutil.rmtree)
    tempfile.mkdtemp = hook("mkdtemp", tempfile.mkdtemp)
    tempfile.mkstemp = hook("mkstemp", tempfile.mkstemp)
    ck.save_file = hook("save_file", ck.save_file)  # the trainer state's tensors
    ck._write_bytes = hook("save_file", ck._write_bytes)  # the SAE's weights (checksummed bytes)
    pathlib.Path.unlink = hook("unlink", pathlib.Path.unlink)
    from vlmsae.train.run import train_sae
    train_sae(np.load(sys.argv[4]), config(), sys.argv[1])
    print(" ".join(ops))
    """
)


def config() -> TrainConfig:
    sae = SAEConfig(d_in=8, d_sae=32, sparsity="batchtopk", k=2, group_fractions=(0.25, 0.75))
    return TrainConfig(
        sae=sae,
        steps=STEPS,
        batch_size=32,
        lr=1e-2,
        warmup_steps=2,
        threshold_start_step=1,
        dead_after=64,
        log_every=1,
        checkpoint_every=EVERY,
        progress=False,
    )


def run_child(tmp_path, out, kill_at: int) -> subprocess.CompletedProcess:
    here = os.path.dirname(__file__)
    args = [sys.executable, "-c", CHILD, str(out), str(kill_at), here, str(tmp_path / "x.npy")]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_kill_at_every_checkpoint_write_point_resumes_exactly(tmp_path):
    x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32) * 5
    np.save(tmp_path / "x.npy", x)
    full = train_sae(x, config(), tmp_path / "full")
    dry = run_child(tmp_path, tmp_path / "dry", 0)
    assert dry.returncode == 0, dry.stderr
    ops = dry.stdout.split()
    assert ops.count("save_file") >= 4  # two checkpoints, each trainer state + SAE weights
    # the first operation (no checkpoint yet), then every one from the second checkpoint on:
    # it replaces the first, so a kill can fall between any two of its writes and removals
    second = ops.index("mkdtemp", ops.index("mkdtemp") + 1) + 1
    points = [1, *range(second, len(ops) + 1)]
    assert "rmtree" in ops[second:]
    for n in points:
        out = tmp_path / f"kill{n}"
        child = run_child(tmp_path, out, n)
        assert child.returncode == -signal.SIGKILL, (n, child.stderr)
        try:
            resumed = train_sae(x, config(), out, resume=True)
        except FileNotFoundError:  # killed before its first checkpoint: start again
            resumed = train_sae(x, config(), out)
        for name, tensor in full.state_dict().items():
            assert torch.equal(tensor, resumed.state_dict()[name]), (n, ops[n - 1], name)
        assert json.loads((out / "summary.json").read_text())["steps"] == STEPS
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
            p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")
        )  # no debris of the interrupted write is left
        assert torch.equal(SAE.load(out).W_dec, full.W_dec)


def test_half_written_metrics_line_does_not_block_resume(tmp_path):
    x = np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32)
    cfg = config()
    train_sae(x, TrainConfig(**{**cfg.__dict__, "steps": EVERY}), tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1')  # the kill fell inside a line
    resumed = train_sae(x, cfg, tmp_path, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == list(range(1, STEPS + 1))
    full = train_sae(x, cfg, tmp_path / "full")
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())


def test_runs_from_before_checkpoints_dir_still_resume(tmp_path):
    """vlmsae <= 0.1 kept the trainer state at the top of the run directory."""
    x = np.random.default_rng(2).normal(size=(400, 8)).astype(np.float32)
    cfg = config()
    train_sae(x, TrainConfig(**{**cfg.__dict__, "steps": EVERY}), tmp_path)
    (state_dir,) = (tmp_path / "checkpoints").iterdir()
    for f in state_dir.iterdir():
        os.replace(f, tmp_path / f.name)
    state_dir.rmdir()
    (tmp_path / "checkpoint.json").unlink()
    resumed = train_sae(x, cfg, tmp_path, resume=True)
    full = train_sae(x, cfg, tmp_path / "full")
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    assert not (tmp_path / "trainer_state.json").exists()  # moved into checkpoints/


LOCK_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_train_faults import config
    from vlmsae.train.run import train_sae

    def slow(step, metrics):
        if step == 1:
            print("started", flush=True)
        time.sleep(0.05)

    cfg = config()
    cfg = type(cfg)(**{**cfg.__dict__, "steps": 2000})
    train_sae(np.load(sys.argv[3]), cfg, sys.argv[1], on_step=slow)
    """
)


def test_two_trainings_into_one_out_are_refused(tmp_path):
    x = np.random.default_rng(3).normal(size=(400, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = [sys.executable, "-c", LOCK_CHILD, str(tmp_path / "run"), os.path.dirname(__file__)]
    child = subprocess.Popen([*args, str(tmp_path / "x.npy")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        with pytest.raises(UserError, match=rf"being written by pid {child.pid} .*vlmsae train"):
            train_sae(x, config(), tmp_path / "run", resume=True)
        assert child.poll() is None  # the first writer goes on undisturbed
    finally:
        child.kill()
        child.wait(timeout=30)
    try:  # the kill freed the lock
        train_sae(x, config(), tmp_path / "run", resume=True)
    except FileNotFoundError:  # killed before its first checkpoint
        train_sae(x, config(), tmp_path / "run")
    assert json.loads((tmp_path / "run/summary.json").read_text())["steps"] == STEPS
