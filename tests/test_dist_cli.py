"""The real launcher: ``torchrun --nproc-per-node 2 -m vlmsae train|score`` (slow: 4 process
start-ups) gives the files of one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vlmsae
from ranks import free_port

pytestmark = pytest.mark.slow
TRAIN = ["--expansion", "4", "--k", "4", "--steps", "12", "--batch-size", "50"]
TRAIN += ["--warmup-steps", "2", "--threshold-start-step", "2", "--checkpoint-every", "5"]


def _vlmsae(args: list[str], n_proc: int) -> None:
    launcher = [sys.executable, "-m", "vlmsae"]
    if n_proc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n_proc}"]
        launcher += [f"--master-port={free_port()}", "-m", "vlmsae"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMSAE_DIST_TIMEOUT": "60"}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_train_and_score_equal_one_process(tmp_path):
    rng = np.random.default_rng(0)
    vlmsae.ActivationStore.write(tmp_path / "acts", rng.normal(size=(600, 16)) + 1.0, meta={})
    emb = rng.normal(size=(600, 8)).astype(np.float32)
    vlmsae.ActivationStore.write(tmp_path / "emb", emb, meta={"kind": "embeddings"})
    for n in (1, 2):
        _vlmsae(["train", "--activations", str(tmp_path / "acts"), "--out", f"{tmp_path}/sae{n}"]
                + TRAIN, n)  # fmt: skip
        _vlmsae(["score", "--activations", str(tmp_path / "acts"), "--embeddings",
                 str(tmp_path / "emb"), "--sae", f"{tmp_path}/sae1", "--out",
                 f"{tmp_path}/score{n}"], n)  # fmt: skip
    one, two = vlmsae.SAE.load(tmp_path / "sae1"), vlmsae.SAE.load(tmp_path / "sae2")
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(
        np.load(tmp_path / "score2/scores.npy"), np.load(tmp_path / "score1/scores.npy"), 1e-9
    )
