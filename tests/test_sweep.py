"""A sweep trains every SAE on one read of each batch, and each equals its separate run."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ranks import run_ranks
from vlmsae.cli import app
from vlmsae.core.errors import UserError
from vlmsae.data.store import ActivationStore
from vlmsae.sae import SAE, SAEConfig
from vlmsae.sae.checkpoint import load_trainer_state
from vlmsae.train import TrainConfig
from vlmsae.train.run import train_sae
from vlmsae.train.sweep import load_sweep, train_sweep

STEPS = 6


class CountingBatches:
    """A replayable iterable of batches that counts the batches handed out."""

    def __init__(self, n_batches: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [torch.randn(32, 16, generator=gen) + 1.0 for _ in range(n_batches)]
        self.read = 0

    def __iter__(self):
        for batch in self.batches:
            self.read += 1
            yield batch


def _base(**sae) -> TrainConfig:
    return TrainConfig(
        sae=SAEConfig(d_in=16, expansion=2, k=4, **sae),
        steps=STEPS,
        batch_size=32,
        warmup_steps=2,
        threshold_start_step=2,
        dead_after=64,
        norm_batches=3,
        checkpoint_every=4,
        progress=False,
    )


def _configs() -> list[TrainConfig]:
    return [
        _base(),
        _base(sparsity="topk"),
        _base(group_fractions=(0.25, 0.75)),
        replace(_base(), sae=SAEConfig(d_in=16, expansion=4, k=3)),
    ]


def _assert_same(a, b) -> None:
    sae_a, sae_b = SAE.load(a), SAE.load(b)
    for name, value in sae_a.state_dict().items():
        assert torch.equal(value, sae_b.state_dict()[name]), name
    state_a, meta_a = load_trainer_state(a)
    state_b, meta_b = load_trainer_state(b)
    assert meta_a["step"] == meta_b["step"] == STEPS
    for key, value in state_a.items():
        if key != "rng.torch":
            assert torch.equal(value, state_b[key]), key


def test_sweep_equals_separate_runs_and_reads_each_batch_once(tmp_path):
    cfgs = _configs()
    data = CountingBatches(STEPS)
    sweep_dirs = [tmp_path / f"sweep{i}" for i in range(len(cfgs))]
    train_sweep(data, cfgs, sweep_dirs)
    assert data.read == 3 + STEPS  # the norm estimate once, then each batch once
    for i, cfg in enumerate(cfgs):
        train_sae(data, cfg, tmp_path / f"alone{i}")
        _assert_same(sweep_dirs[i], tmp_path / f"alone{i}")


def test_a_sweep_of_one_sae_is_train_sae(tmp_path):
    cfg = _base(group_fractions=(0.25, 0.75))
    data = CountingBatches(STEPS)
    (swept,) = train_sweep(data, [cfg], [tmp_path / "sweep"])
    alone = train_sae(data, cfg, tmp_path / "alone")
    _assert_same(tmp_path / "sweep", tmp_path / "alone")
    (in_memory,) = train_sweep(data, [cfg])
    for name, value in alone.state_dict().items():  # the returned SAEs too (raw units)
        assert torch.equal(value, swept.state_dict()[name]), name
        assert torch.equal(value, in_memory.state_dict()[name]), name


def test_train_sweep_cli_shows_progress_in_the_chosen_mode(tmp_path, caplog, monkeypatch):
    """``vlmsae train --sweep`` reports progress as every command does: ``--progress none``
    prints nothing, ``log`` plain lines, neither a bar's carriage-return frames."""
    monkeypatch.setenv("VLMSAE_PROGRESS_MIN_INTERVAL", "0")  # a line at every 10 %
    caplog.set_level(logging.INFO, logger="vlmsae.progress")
    rows = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    ActivationStore.write(tmp_path / "acts", rows)
    (tmp_path / "sweep.toml").write_text("[grid]\nexpansion = [1, 2]\n")
    args = ["train", "--activations", str(tmp_path / "acts"), "--arch", "topk", "--k", "2"]
    args += ["--steps", "10", "--batch-size", "32", "--warmup-steps", "2"]
    args += ["--sweep", str(tmp_path / "sweep.toml")]
    lines = {}
    for mode in ("none", "log"):
        caplog.clear()
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / mode), "--progress", mode])
        assert res.exit_code == 0, res.output
        assert "\r" not in res.output and "train 2 saes" not in res.output, res.output
        lines[mode] = [r.getMessage() for r in caplog.records if r.name == "vlmsae.progress"]
    assert lines["none"] == []
    assert lines["log"] and all(line.startswith("train 2 saes: ") for line in lines["log"])


def _sweep_two(root: str) -> None:
    data = CountingBatches(STEPS)
    train_sweep(data, _configs()[:2], [f"{root}/a", f"{root}/b"])


def test_sweep_under_two_ranks_equals_one_process(tmp_path):
    run_ranks(_sweep_two, 2, str(tmp_path / "two"))
    _sweep_two(str(tmp_path / "one"))
    for name in ("a", "b"):
        sae_a, sae_b = SAE.load(tmp_path / "two" / name), SAE.load(tmp_path / "one" / name)
        for key, value in sae_a.state_dict().items():
            torch.testing.assert_close(value, sae_b.state_dict()[key], atol=2e-5, rtol=1e-4)


def test_sweep_file_grid_and_entries(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        '[grid]\narch = ["batchtopk", "matryoshka"]\nexpansion = [1, 4]\n\n'
        '[[sae]]\nname = "wide"\narch = "topk"\nexpansion = 8\nk = 2\nlr = 0.001\n'
    )
    cfgs = load_sweep(path, _base())
    assert sorted(cfgs) == sorted(
        ["batchtopk-x1-k4", "batchtopk-x4-k4", "matryoshka-x1-k4", "matryoshka-x4-k4", "wide"]
    )
    assert cfgs["matryoshka-x4-k4"].sae.group_sizes == (4, 8, 16, 36)  # the paper's fractions
    assert cfgs["wide"].sae.sparsity == "topk" and cfgs["wide"].lr == 0.001
    assert cfgs["wide"].sae.d_sae == 128 and cfgs["batchtopk-x1-k4"].sae.group_sizes == (16,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[sae]]\nbatch_size = 8\n", "batch_size and seed are the sweep's"),
        ("[[sae]]\nwidth = 8\n", "unknown or not per-SAE setting"),
        ("[grid]\nk = [100]\n", "k=100 is larger than d_sae"),
        ("steps = 3\n", "expected a \\[grid\\] table"),
        ("[grid\n", "cannot read the sweep file"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path, text, message):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_sweep(path, _base())


def test_sweep_refuses_different_batch_sizes():
    cfgs = [_base(), replace(_base(), batch_size=16)]
    with pytest.raises(UserError, match="batch_sizes differ"):
        train_sweep(CountingBatches(2), cfgs)
