"""The demo's untrained baselines: ``init`` is the SAE the trainer starts from, ``random``
an independent random encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlmsae
from vlmsae.data.store import ActivationStore
from vlmsae.demo.baselines import untrained_sae


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(512, 16)) * 3 + 5).astype(np.float32)
    return ActivationStore.write(tmp_path_factory.mktemp("acts") / "acts", x)


def _cfg():
    return vlmsae.SAEConfig(d_in=16, expansion=4, sparsity="batchtopk", k=3)


def test_init_baseline_is_where_training_starts(store):
    """One training step at a vanishing lr leaves the trainer's initial SAE: its codes equal
    the ``init`` baseline's up to one positive scale (the trainer may normalise inputs), on
    the same latents."""
    cfg = vlmsae.TrainConfig(
        sae=_cfg(), steps=1, batch_size=128, seed=3, lr=1e-30, warmup_steps=1,
        threshold_start_step=10, log_every=1, progress=False,
    )  # fmt: skip
    trained = vlmsae.train_sae(store.dir, cfg)
    init = untrained_sae(_cfg(), store.dir, "init", seed=3, batch_size=128)
    x = torch.from_numpy(store[0:256])
    with torch.no_grad():
        a, b = trained.encode(x, mode="topk"), init.encode(x, mode="topk")
    assert torch.equal(a > 0, b > 0)
    scale = (b.sum() / a.sum()).item()
    assert scale > 0
    torch.testing.assert_close(a * scale, b, rtol=1e-3, atol=1e-4)


def test_random_baseline_has_its_own_encoder(store):
    init = untrained_sae(_cfg(), store.dir, "init", seed=3, batch_size=128)
    rand = untrained_sae(_cfg(), store.dir, "random", seed=3, batch_size=128)
    torch.testing.assert_close(init.W_enc, init.W_dec.t())
    assert not torch.allclose(rand.W_enc, rand.W_dec.t())
    torch.testing.assert_close(rand.W_enc.norm(dim=0), torch.ones(64))
    assert torch.equal(rand.b_dec, torch.zeros(16)) and init.b_dec.abs().sum() > 0
    with pytest.raises(ValueError, match="kind"):
        untrained_sae(_cfg(), store.dir, "trained", seed=3, batch_size=128)
