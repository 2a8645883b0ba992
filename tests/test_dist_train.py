"""Data-parallel training on 2 gloo processes equals training in one process.

Each rank trains on its slice of every global batch (31 rows: 15 + 16, uneven on purpose);
BatchTopK selects over the global batch, dead counters, the AuxK variance, the threshold,
``norm_factor`` and the geometric-median init are global, so the weights, threshold and
dead counters match one process to float tolerance. A rank killed mid-run resumes exactly.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ranks import run_ranks
from vlmsae.core import dist
from vlmsae.data.store import ActivationStore
from vlmsae.sae import SAE, SAEConfig
from vlmsae.sae.checkpoint import load_trainer_state
from vlmsae.train import TrainConfig
from vlmsae.train.run import train_sae

ARCHS = {
    "batchtopk": {"sparsity": "batchtopk"},
    "matryoshka": {"sparsity": "batchtopk", "group_fractions": (0.25, 0.75)},
    "topk": {"sparsity": "topk"},
    "relu": {"sparsity": "relu", "k": None},
    "jumprelu": {"sparsity": "jumprelu", "k": None},
}
STEPS = 8


def _data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(400, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    return x_ND + 3.0  # off-centre: norm_factor and the geometric median matter


def _cfg(arch: str, steps: int = STEPS) -> TrainConfig:
    sae = SAEConfig(**{"d_in": 16, "expansion": 4, "k": 4, **ARCHS[arch]})
    return TrainConfig(
        sae=sae,
        steps=steps,
        batch_size=31,
        warmup_steps=2,
        threshold_start_step=2,
        dead_after=62,  # some latents die within the run: AuxK takes part
        norm_batches=3,
        checkpoint_every=4,
        log_every=4,
        progress=False,
    )


def _train_all(root: str, archs: tuple[str, ...]) -> None:
    """Train every arch into ``root/<arch>`` (called on each rank, or in one process), and
    BatchTopK from a store (each rank reads only its rows) into ``root/store``."""
    for arch in archs:
        train_sae(_data(), _cfg(arch), Path(root) / arch)
    store = Path(root).parent / "acts"
    if dist.is_main() and not store.exists():
        ActivationStore.write(store, _data().numpy(), meta={})
    dist.barrier()
    train_sae(store, _cfg("batchtopk"), Path(root) / "store")


def _die_at_step_6(step: int, metrics: dict) -> None:
    if step == 6 and dist.rank() == 1:
        os._exit(3)  # a rank dies abruptly (no cleanup, no exception)


def _train_killed(root: str) -> None:
    train_sae(_data(), _cfg("batchtopk"), Path(root), on_step=_die_at_step_6)


def _resume(root: str) -> None:
    train_sae(_data(), _cfg("batchtopk"), Path(root), resume=True)


def _assert_same_run(a: Path, b: Path) -> None:
    sae_a, sae_b = SAE.load(a), SAE.load(b)
    for name, value in sae_a.state_dict().items():
        torch.testing.assert_close(value, sae_b.state_dict()[name], atol=2e-5, rtol=1e-4)
    state_a, meta_a = load_trainer_state(a)
    state_b, meta_b = load_trainer_state(b)
    assert meta_a["step"] == meta_b["step"] == STEPS
    assert meta_a["norm_factor"] == pytest.approx(meta_b["norm_factor"], rel=1e-6)
    assert torch.equal(state_a["examples_since_fired"], state_b["examples_since_fired"])
    final_a = json.loads((a / "summary.json").read_text())["final"]
    final_b = json.loads((b / "summary.json").read_text())["final"]
    for key in ("loss", "recon_loss", "aux_loss", "r2", "l0", "mse", "dead_fraction"):
        assert final_a[key] == pytest.approx(final_b[key], rel=1e-4, abs=1e-6), key
    assert ("group_loss" in final_a) == ("group_loss" in final_b)
    if "group_loss" in final_a:
        assert final_a["group_loss"] == pytest.approx(final_b["group_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    _train_all(str(root), tuple(ARCHS))
    return root


def test_a_store_reads_only_the_rows_of_a_part(tmp_path):
    store = ActivationStore.write(tmp_path / "acts", _data().numpy(), meta={})
    kw = {"seed": 3, "buffer_rows": 64, "chunk_rows": 16, "epochs": 2}
    whole = list(store.batches(31, **kw))
    for part in (range(0, 15), range(15, 31)):
        sliced = list(store.batches(31, part=part, **kw))
        assert len(sliced) == len(whole)
        for got, want in zip(sliced, whole, strict=True):
            np.testing.assert_array_equal(got, want[part.start : part.stop])


def test_two_ranks_equal_one_process(tmp_path, single):
    run_ranks(_train_all, 2, str(tmp_path), tuple(ARCHS))
    for arch in (*ARCHS, "store"):
        _assert_same_run(tmp_path / arch, single / arch)
    dead = load_trainer_state(single / "batchtopk")[0]["examples_since_fired"] >= 62
    assert dead.any(), "no latent died: the test would not check AuxK and the dead counters"
    threshold = float(SAE.load(tmp_path / "batchtopk").threshold)
    assert threshold > 0
    assert not (tmp_path / "batchtopk" / "summary.json").read_text().count("NaN")


def test_a_killed_rank_resumes_to_the_same_weights(tmp_path, single):
    with pytest.raises(Exception, match="exit|terminated|signal|rank"):
        run_ranks(_train_killed, 2, str(tmp_path))
    assert load_trainer_state(tmp_path)[1]["step"] in (4,)  # the checkpoint before the kill
    run_ranks(_resume, 2, str(tmp_path))
    _assert_same_run(tmp_path, single / "batchtopk")


def test_a_held_output_lock_fails_every_rank_at_once(tmp_path):
    run = tmp_path / "run"
    (run / "topk").mkdir(parents=True)
    fd = os.open(run / "topk" / ".vlmsae.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds the run directory
    try:
        with pytest.raises(Exception, match="being written by"):
            run_ranks(_train_all, 2, str(run), ("topk",), timeout=60)
    finally:
        os.close(fd)
    assert not (run / "topk" / "config.json").exists()
