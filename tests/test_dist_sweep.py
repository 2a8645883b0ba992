"""A sweep spread over 2 gloo ranks: each rank trains its share of the SAEs (balanced by
parameter count) on whole batches, exactly as one process trains each SAE alone; a rank
killed mid-sweep resumes to the same weights; the output lock still refuses a second writer.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ranks import run_ranks
from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.sae import SAE, SAEConfig
from vlmsae.sae.checkpoint import load_trainer_state
from vlmsae.train import TrainConfig
from vlmsae.train.placement import choose_placement, n_params, partition
from vlmsae.train.run import Run, train_sae
from vlmsae.train.sweep import load_sweep, sweep_file_options, train_sweep

STEPS = 8
NORM_BATCHES = 3
# rank 0: the x8 SAE alone; rank 1: the x4, x2 and x1 ones (as many parameters, about)
WIDTHS = {"topk-x8": ("topk", 8), "btk-x4": ("batchtopk", 4), "mat-x2": ("matryoshka", 2),
          "btk-x1": ("batchtopk", 1)}  # fmt: skip
OWNER = {"topk-x8": 0, "btk-x4": 1, "mat-x2": 1, "btk-x1": 1}


class Batches:
    """A replayable iterable of fixed batches; on rank ``die_on_rank`` the process dies
    (no cleanup) when it is asked for its ``die_at``-th batch of the run."""

    def __init__(self, die_on_rank: int | None = None, die_at: int = 0) -> None:
        gen = torch.Generator().manual_seed(0)
        mix = torch.randn(16, 16, generator=gen)
        self.batches = [torch.randn(32, 16, generator=gen) @ mix + 2.0 for _ in range(STEPS)]
        self.die_on_rank, self.die_at, self.served = die_on_rank, die_at, 0

    def __iter__(self):
        for batch in self.batches:
            self.served += 1
            if self.served == self.die_at and int(os.environ.get("RANK", 0)) == self.die_on_rank:
                os._exit(3)  # the rank dies abruptly (dist.rank() is 0 inside the sweep)
            yield batch


def _cfg(name: str) -> TrainConfig:
    arch, expansion = WIDTHS[name]
    fractions = (0.25, 0.75) if arch == "matryoshka" else None
    sparsity = "batchtopk" if arch == "matryoshka" else arch
    sae = SAEConfig(d_in=16, expansion=expansion, k=3, sparsity=sparsity,
                    group_fractions=fractions)  # fmt: skip
    return TrainConfig(sae=sae, steps=STEPS, batch_size=32, warmup_steps=2,
                       threshold_start_step=2, dead_after=64, norm_batches=NORM_BATCHES,
                       checkpoint_every=4, log_every=4, progress=False)  # fmt: skip


def _record_prepared(root: str) -> None:
    """Record, in ``root/prepared-<rank>``, the run directories this rank builds SAEs for."""
    prepare = Run.prepare
    rank = int(os.environ.get("RANK", 0))

    def recording(source, cfg, out_path, *args, **kwargs):
        with open(Path(root) / f"prepared-{rank}", "a") as f:
            f.write(f"{Path(out_path).name}\n")
        return prepare(source, cfg, out_path, *args, **kwargs)

    Run.prepare = staticmethod(recording)  # this (forked) rank only


def _prepared(root: Path, rank: int) -> set[str]:
    path = root / f"prepared-{rank}"
    return set(path.read_text().split()) if path.exists() else set()


def _spread(root: str, data: Batches | None = None, resume: bool = False) -> None:
    _record_prepared(root)
    names, data = list(WIDTHS), data or Batches()
    dirs = [Path(root) / n for n in names]
    saes = train_sweep(data, [_cfg(n) for n in names], dirs, resume=resume, placement="spread")
    held = {n for n, s in zip(names, saes, strict=True) if s is not None}
    Path(root, f"held-{dist.rank()}").write_text("\n".join(sorted(held)))


class SlowOnRank1(Batches):
    """Rank 1 takes a second per training batch (its SAEs are the slow ones)."""

    def __iter__(self):
        for batch in super().__iter__():
            if self.served > NORM_BATCHES and int(os.environ.get("RANK", 0)) == 1:
                time.sleep(1.0)
            yield batch


def _spread_with_short_timeout(root: str) -> None:
    os.environ["VLMSAE_DIST_TIMEOUT"] = "3"  # rank 0 waits ~8 s for rank 1 at the end
    _spread(root, SlowOnRank1())


def _spread_killed(root: str) -> None:
    _spread(root, Batches(die_on_rank=1, die_at=NORM_BATCHES + 7))  # in step 7 of rank 1


def _spread_resumed(root: str) -> None:
    _spread(root, resume=True)


def _assert_same(a: Path, b: Path) -> None:
    """Bit-identical weights, threshold, optimizer and trainer state."""
    sae_a, sae_b = SAE.load(a), SAE.load(b)
    for name, value in sae_a.state_dict().items():
        assert torch.equal(value, sae_b.state_dict()[name]), f"{a.name}: {name}"
    state_a, meta_a = load_trainer_state(a)
    state_b, meta_b = load_trainer_state(b)
    assert meta_a["step"] == meta_b["step"] == STEPS
    for key, value in state_a.items():
        if key != "rng.torch":
            assert torch.equal(value, state_b[key]), f"{a.name}: {key}"


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    """Every SAE trained on its own in one process."""
    root = tmp_path_factory.mktemp("alone")
    for name in WIDTHS:
        train_sae(Batches(), _cfg(name), root / name)
    return root


def test_partition_balances_parameters_and_is_deterministic():
    cfgs = [_cfg(n) for n in WIDTHS]
    assert partition(cfgs, 2) == [[0], [1, 2, 3]]
    assert partition(cfgs, 1) == [[0, 1, 2, 3]] and partition(cfgs, 5)[4] == []
    wide = [replace(_cfg("btk-x1"), sae=SAEConfig(d_in=16, expansion=e, k=3)) for e in
            (1, 2, 3, 4, 5, 6, 7, 8, 9)]  # fmt: skip
    parts = partition(wide, 3)
    assert sorted(i for p in parts for i in p) == list(range(9))
    loads = [sum(n_params(wide[i]) for i in p) for p in parts]
    assert max(loads) - min(loads) <= 2 * n_params(wide[0])  # round robin: 6 x that


def test_auto_placement_spreads_when_the_saes_do_not_fit_one_rank():
    cfgs = [_cfg(n) for n in WIDTHS]
    need = 16 * sum(n_params(c) for c in cfgs)  # weights, gradients, Adam's two moments
    assert choose_placement(cfgs, "auto", n_ranks=2, budget_bytes=need - 1) == "spread"
    assert choose_placement(cfgs, "auto", n_ranks=2, budget_bytes=need) == "replicate"
    assert choose_placement(cfgs, "auto", n_ranks=1, budget_bytes=1) == "replicate"
    assert choose_placement(cfgs, "auto", n_ranks=2) == "replicate"  # this machine's RAM
    assert choose_placement(cfgs, "spread", n_ranks=2, budget_bytes=need) == "spread"
    with pytest.raises(UserError, match="unknown sweep placement 'wide'"):
        choose_placement(cfgs, "wide")


def test_spread_sweep_on_two_ranks_equals_separate_runs(tmp_path, alone):
    run_ranks(_spread, 2, str(tmp_path))
    for rank in (0, 1):
        mine = {n for n, r in OWNER.items() if r == rank}
        assert _prepared(tmp_path, rank) == mine  # each rank built only its own SAEs
        assert set((tmp_path / f"held-{rank}").read_text().split()) == mine
    for name in WIDTHS:
        _assert_same(tmp_path / name, alone / name)


def test_a_rank_that_finishes_early_waits_past_the_collective_timeout(tmp_path, alone):
    run_ranks(_spread_with_short_timeout, 2, str(tmp_path), timeout=60)
    for name in WIDTHS:
        _assert_same(tmp_path / name, alone / name)


def test_a_rank_killed_mid_sweep_resumes_to_the_same_weights(tmp_path, alone):
    with pytest.raises(Exception, match="exit|terminated|signal|rank|Connection|closed"):
        run_ranks(_spread_killed, 2, str(tmp_path))
    for name, rank in OWNER.items():  # rank 0 finished its SAE; rank 1's stopped at step 4
        assert load_trainer_state(tmp_path / name)[1]["step"] == (STEPS if rank == 0 else 4)
    run_ranks(_spread_resumed, 2, str(tmp_path))
    for name in WIDTHS:
        _assert_same(tmp_path / name, alone / name)


def test_a_held_lock_of_one_sae_fails_every_rank_before_training(tmp_path):
    held = tmp_path / "btk-x4"  # rank 1's
    held.mkdir(parents=True)
    fd = os.open(held / ".vlmsae.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds that run directory
    try:
        with pytest.raises(Exception, match="being written by"):
            run_ranks(_spread, 2, str(tmp_path), timeout=60)
    finally:
        os.close(fd)
    assert not list(tmp_path.glob("*/config.json"))  # rank 0 did not start either
    assert not _prepared(tmp_path, 0) and not _prepared(tmp_path, 1)


class Interrupted(RuntimeError):
    pass


class Interrupting(Batches):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def __iter__(self):
        for batch in super().__iter__():
            if self.served == self.at:
                raise Interrupted
            yield batch


def test_runs_that_stopped_at_different_checkpoints_resume_together(tmp_path, alone):
    """One process: SAEs checkpointing every 2 and every 4 steps, interrupted in step 7,
    stand at steps 6 and 4; the resumed sweep gives each its own batches from there on."""
    names = ["btk-x4", "mat-x2"]
    cfgs = [replace(_cfg(names[0]), checkpoint_every=2), _cfg(names[1])]
    dirs = [tmp_path / n for n in names]
    with pytest.raises(Interrupted):
        train_sweep(Interrupting(NORM_BATCHES + 7), cfgs, dirs)
    assert [load_trainer_state(d)[1]["step"] for d in dirs] == [6, 4]
    data = Batches()
    train_sweep(data, cfgs, dirs, resume=True)
    assert data.served == STEPS  # the batches from step 4 on, each read once (skip: 4 + 4)
    for name in names:
        _assert_same(tmp_path / name, alone / name)


def _cli_sweep(root: str) -> None:
    from vlmsae.cli import app

    _record_prepared(root)
    args = ["train", "--activations", f"{root}/acts", "--out", f"{root}/runs", "--sweep",
            f"{root}/sweep.toml", "--steps", "3", "--batch-size", "32", "--k", "3",
            "--warmup-steps", "1", "--threshold-start-step", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def test_the_sweep_file_places_the_saes_of_the_cli(tmp_path):
    from vlmsae.data.store import ActivationStore

    rng = np.random.default_rng(0)
    ActivationStore.write(tmp_path / "acts", rng.normal(size=(200, 16)) + 1.0, meta={})
    grid = '[grid]\narch = ["batchtopk", "topk"]\nexpansion = [1, 4]\n'
    (tmp_path / "sweep.toml").write_text(grid + '\n[sweep]\nplacement = "spread"\n')
    run_ranks(_cli_sweep, 2, str(tmp_path), timeout=120)
    names = {"batchtopk-x1-k3", "batchtopk-x4-k3", "topk-x1-k3", "topk-x4-k3"}
    ranks = [_prepared(tmp_path, r) for r in (0, 1)]
    assert ranks[0] | ranks[1] == names and not ranks[0] & ranks[1] and all(ranks)
    for name in names:
        assert (tmp_path / "runs" / name / "summary.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sweep]\nplacement = "wide"\n', "unknown sweep placement 'wide'"),
        ("[sweep]\nranks = 2\n", "unknown option\\(s\\) \\['ranks'\\] in \\[sweep\\]"),
    ],
)
def test_bad_sweep_options_are_refused(tmp_path, text, message):
    path = tmp_path / "sweep.toml"
    path.write_text("[grid]\nexpansion = [1, 2]\n" + text)
    assert len(load_sweep(path, _cfg("btk-x1"))) == 2  # the SAEs read as before
    with pytest.raises(UserError, match=message):
        sweep_file_options(path)


def test_sweep_placement_needs_a_sweep(tmp_path):
    from vlmsae.cli import app
    from vlmsae.data.store import ActivationStore

    ActivationStore.write(tmp_path / "acts", np.ones((40, 16), np.float32), meta={})
    args = ["train", "--activations", f"{tmp_path}/acts", "--out", f"{tmp_path}/run"]
    result = CliRunner().invoke(app, [*args, "--sweep-placement", "spread"])
    assert result.exit_code == 2
    assert "Error: --sweep-placement places the SAEs of a --sweep" in result.output
