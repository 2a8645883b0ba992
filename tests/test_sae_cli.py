"""The SAE stage's commands: vlmsae train / convert / demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vlmsae.cli import app
from vlmsae.data.store import ActivationStore
from vlmsae.sae import SAE

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_train_from_store_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    meta = {"model": "tiny", "hookpoint": "post_mlp_residual", "layer": 1, "tokens": "all"}
    ActivationStore.write(tmp_path / "acts", rng.normal(size=(600, 8)).astype(np.float32), meta)
    ActivationStore.write(tmp_path / "val", rng.normal(size=(100, 8)).astype(np.float32), meta)
    args = [
        "train",
        "--activations",
        tmp_path / "acts",
        "--val",
        tmp_path / "val",
        "--out",
        tmp_path / "run",
        "--arch",
        "matryoshka",
        "--group-fractions",
        "0.25,0.75",
        "--expansion",
        "4",
        "--k",
        "3",
        "--steps",
        "12",
        "--batch-size",
        "64",
        "--log-every",
        "4",
        "--checkpoint-every",
        "4",
        "--warmup-steps",
        "2",
        "--threshold-start-step",
        "2",
        "--dtype",
        "bfloat16",
    ]
    result = invoke(*args)
    assert "R²" in result.output
    sae = SAE.load(tmp_path / "run")
    assert sae.cfg.group_sizes == (8, 24) and sae.cfg.layer == 1 and sae.cfg.k == 3
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["val"]["n_rows"] == 100 and summary["steps"] == 12
    k_arg = args.index("--k") + 1
    args[k_arg] = "4"  # a resumed run must keep the config: k differs -> refused, named
    result = runner.invoke(app, [str(a) for a in args] + ["--resume"])
    assert result.exit_code == 2 and "sae.k 3 -> 4" in result.stderr
    args[k_arg] = "3"
    args[args.index("--steps") + 1] = "16"  # --resume --steps N extends the finished run
    invoke(*args, "--resume")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["steps"] == 16 and summary["final"]["step"] == 16
    before = (tmp_path / "run/summary.json").read_text()
    invoke(*args, "--resume")  # resuming a finished run changes nothing
    assert (tmp_path / "run/summary.json").read_text() == before


def test_train_rejects_bad_arguments(tmp_path):
    ActivationStore.write(tmp_path / "acts", np.zeros((64, 8), np.float32))
    base = ["train", "--activations", tmp_path / "acts", "--out", tmp_path / "run"]
    result = runner.invoke(app, [str(a) for a in [*base, "--arch", "gated"]])
    assert result.exit_code != 0 and "gated" in result.output
    result = runner.invoke(app, [str(a) for a in [*base, "--group-fractions", "a b"]])
    assert result.exit_code != 0
    result = runner.invoke(app, [str(a) for a in [*base, "--expansion", "1", "--k", "9"]])
    assert result.exit_code == 2 and "Error: k=9" in result.stderr


def test_convert_command(tmp_path):
    w = torch.randn(16, 8)
    state = {
        "W_enc": w.t().contiguous(),
        "b_enc": torch.zeros(16),
        "W_dec": w,
        "b_dec": torch.zeros(8),
        "k": torch.tensor(2),
        "threshold": torch.tensor(0.1),
        "group_sizes": torch.tensor([4, 12]),
    }
    torch.save(state, tmp_path / "ae.pt")
    invoke(
        "convert",
        tmp_path / "ae.pt",
        "--out",
        tmp_path / "sae",
        "--layer",
        "22",
        "--hookpoint",
        "post_mlp_residual",
    )
    sae = SAE.load(tmp_path / "sae")
    assert sae.cfg.layer == 22 and sae.cfg.group_sizes == (4, 12)
    assert float(sae.threshold) == pytest.approx(0.1)
    config = json.loads((tmp_path / "sae/config.json").read_text())
    assert config["converted_from"].endswith("ae.pt")
