"""Training: planted-dictionary recovery, sparsity invariants, resume, bad input, files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import vlmsae
from vlmsae.core.errors import NonFiniteError
from vlmsae.data.store import ActivationStore
from vlmsae.sae import SAE, SAEConfig
from vlmsae.sae.checkpoint import load_trainer_state
from vlmsae.train import TrainConfig
from vlmsae.train.config import RUN_OPTIONS, lr_factor
from vlmsae.train.planted import dictionary_recovery, make_planted
from vlmsae.train.run import train_sae
from vlmsae.train.state import evaluate_sae
from vlmsae.train.step import geometric_median

K = 5


@pytest.fixture(scope="module")
def planted():
    data = make_planted(24_000, d=64, n_features=256, n_active=K, noise=0.01, seed=0)
    return data.x[:20_000], data.x[20_000:], data.dictionary


def planted_config(sparsity="batchtopk", groups=None, steps=250, **kwargs):
    sae = SAEConfig(d_in=64, expansion=8, sparsity=sparsity, k=K, group_fractions=groups)
    defaults = dict(
        steps=steps,
        batch_size=256,
        lr=4e-3,
        warmup_steps=30,
        threshold_start_step=60,
        dead_after=256 * 50,
        log_every=50,
        progress=False,
    )
    return TrainConfig(sae=sae, **{**defaults, **kwargs})


ARCHS = {
    "batchtopk": dict(sparsity="batchtopk"),
    "matryoshka": dict(sparsity="batchtopk", groups=(0.125, 0.25, 0.625)),
    "topk": dict(sparsity="topk"),
}


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    """Train each architecture once per module, on first use."""
    x_train, x_val, _ = planted
    cache = {}

    def get(arch):
        if arch not in cache:
            out = tmp_path_factory.mktemp(arch)
            cache[arch] = (
                arch,
                train_sae(x_train, planted_config(**ARCHS[arch]), out, val=x_val),
                out,
            )
        return cache[arch]

    return get


@pytest.fixture(params=list(ARCHS))
def trained(request, runs):
    return runs(request.param)


def test_planted_dictionary_is_recovered(trained, planted):
    arch, sae, _ = trained
    recovery = dictionary_recovery(sae.W_dec, planted[2], threshold=0.9)
    assert recovery.fraction >= 0.9, f"{arch}: recovered {recovery.fraction:.2f}"
    assert evaluate_sae(sae, planted[1])["r2"] > 0.7


def test_decoder_rows_stay_unit_norm(trained):
    _, sae, _ = trained
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae))


def test_sparsity_on_held_out_data(trained, planted):
    arch, sae, _ = trained
    x_val = planted[1]
    codes = sae.encode(x_val)
    l0 = (codes != 0).sum(-1).float()
    if arch == "topk":
        assert (l0 == K).all()
        return
    assert float(sae.threshold) > 0
    assert 0.6 * K <= l0.mean() <= 1.5 * K, f"threshold-mode L0 {l0.mean():.2f}, k={K}"
    assert (sae.encode(x_val, mode="batch") != 0).sum() == K * len(x_val)


def test_matryoshka_prefixes_improve_monotonically(runs, planted):
    _, sae, out = runs("matryoshka")
    nmse = evaluate_sae(sae, planted[1])["group_nmse"]
    assert len(nmse) == 3 and all(a > b for a, b in zip(nmse, nmse[1:], strict=False)), nmse
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(last["group_loss"]) == 3


def test_run_directory_files(trained):
    _, sae, out = trained
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "sae.safetensors",
        "checkpoint.json",
        "checkpoints",
        "metrics.jsonl",
        "summary.json",
    } <= names
    (state_dir,) = (out / "checkpoints").iterdir()  # the latest checkpoint only
    assert {p.name for p in state_dir.iterdir()} == {
        "trainer_state.json",
        "trainer_state.safetensors",
    }
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [50, 100, 150, 200, 250]
    held_out = {"mse", "nmse", "r2", "l0", "dead_fraction"}
    assert held_out | {"aux_loss", "lr", "loss", "examples_per_s"} <= set(lines[-1])
    assert held_out <= set(lines[-1]["val"])
    assert lines[0]["lr"] == lines[-1]["lr"] == 4e-3  # warm-up done, no decay (the paper's)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 250 and summary["val"]["r2"] == lines[-1]["val"]["r2"]
    loaded = SAE.load(out)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sae.state_dict().items())
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 250


@pytest.mark.slow
@pytest.mark.parametrize("sparsity,coeff", [("relu", 0.1), ("jumprelu", 0.01)])
def test_penalised_variants_recover_planted_dictionary(planted, sparsity, coeff):
    x_train, x_val, dictionary = planted
    cfg = planted_config(sparsity, l1_coeff=coeff, l0_coeff=coeff)
    sae = train_sae(x_train, cfg)
    assert dictionary_recovery(sae.W_dec, dictionary).fraction >= 0.9
    assert evaluate_sae(sae, x_val)["r2"] > 0.8


# -- resume, bad input ------------------------------------------------------------------
def small_config(**kwargs):
    sae = SAEConfig(d_in=16, expansion=4, sparsity="batchtopk", k=3, group_fractions=(0.25, 0.75))
    defaults = dict(
        steps=30,
        batch_size=32,
        lr=1e-2,
        warmup_steps=5,
        threshold_start_step=5,
        dead_after=64,
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    return TrainConfig(sae=sae, **{**defaults, **kwargs})


class Interrupt(Exception):
    pass


def interrupt_at(step_to_fail):
    def on_step(step, metrics):
        if step == step_to_fail:
            raise Interrupt

    return on_step


@pytest.mark.parametrize("source", ["tensor", "store"])
def test_resume_equals_uninterrupted(tmp_path, source):
    x = torch.randn(500, 16) * torch.linspace(0.1, 2, 16)
    data = x if source == "tensor" else ActivationStore.write(tmp_path / "acts", x.numpy())
    cfg = small_config()
    full = train_sae(data, cfg, tmp_path / "full")
    with pytest.raises(Interrupt):
        train_sae(data, cfg, tmp_path / "cut", on_step=interrupt_at(17))
    assert load_trainer_state(tmp_path / "cut")[1]["step"] == 10
    with pytest.raises(FileExistsError, match="--resume"):
        train_sae(data, cfg, tmp_path / "cut")
    resumed = train_sae(data, cfg, tmp_path / "cut", resume=True)
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert float(full.threshold) > 0
    full_state, _ = load_trainer_state(tmp_path / "full")
    cut_state, _ = load_trainer_state(tmp_path / "cut")
    for name, tensor in full_state.items():
        assert torch.equal(tensor, cut_state[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut/metrics.jsonl").open()]
    assert steps == [10, 20, 30]


def test_resume_refuses_a_different_config(tmp_path):
    x = torch.randn(200, 16)
    train_sae(x, small_config(steps=10), tmp_path)
    with pytest.raises(ValueError, match="lr"):
        train_sae(x, small_config(steps=10, lr=0.5), tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_sae(x, small_config(steps=10), tmp_path / "empty", resume=True)
    options = dict(log_every=1, checkpoint_every=3, val_rows=7, progress=True)
    train_sae(x, small_config(steps=12, **options), tmp_path, resume=True)  # run options: free
    assert load_trainer_state(tmp_path)[1]["step"] == 12  # and steps may grow


def test_the_recipe_is_every_field_but_the_run_options():
    runtime = ["checkpoint_every", "device", "log_every", "progress", "val_rows"]
    assert sorted(RUN_OPTIONS) == runtime
    cfg = small_config()
    assert set(cfg.recipe()) == set(cfg.to_dict()) - RUN_OPTIONS
    assert replace(cfg, device="cuda", log_every=1, progress=True).recipe() == cfg.recipe()
    for change in (dict(dtype="bfloat16"), dict(norm_batches=3), dict(steps=31)):
        assert replace(cfg, **change).recipe() != cfg.recipe(), change
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip unchanged


def test_nan_batch_stops_and_keeps_last_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(32, 16)).astype(np.float32) for _ in range(30)]
    batches[7][3, 5] = np.nan  # the batch of step 8
    with pytest.raises(ValueError, match="NaN, Inf"):  # caught up front by the scale estimate
        train_sae(batches, small_config(checkpoint_every=5), tmp_path)
    assert not (tmp_path / "checkpoint.json").exists()
    raw = dict(normalize_activations=False)
    with pytest.raises(NonFiniteError, match=r"step 8.*last good checkpoint \(step 5\)"):
        train_sae(batches, small_config(checkpoint_every=5, **raw), tmp_path)
    assert load_trainer_state(tmp_path)[1]["step"] == 5
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 5
    assert torch.isfinite(SAE.load(tmp_path).W_enc).all()
    batches[7][3, 5] = np.inf
    with pytest.raises(NonFiniteError, match="no checkpoint was written"):
        train_sae(batches, small_config(checkpoint_every=50, **raw), tmp_path / "b")


def test_store_width_mismatch_names_both(tmp_path):
    store = ActivationStore.write(tmp_path / "acts", np.zeros((100, 12), np.float32))
    with pytest.raises(ValueError, match=r"width 12 .* d_in=16"):
        train_sae(store.dir, small_config(), tmp_path / "run")
    with pytest.raises(ValueError, match="exceeds"):
        train_sae(torch.zeros(10, 16), small_config(), None)


def test_store_metadata_reaches_the_checkpoint(tmp_path):
    meta = {"model": "tiny-clip", "hookpoint": "post_mlp_residual", "layer": -2, "tokens": "cls"}
    x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    store = ActivationStore.write(tmp_path / "acts", x, meta=meta)
    sae = vlmsae.train_sae(store.dir, small_config(steps=4), out_dir=tmp_path / "run")
    assert (sae.cfg.model, sae.cfg.hookpoint, sae.cfg.layer, sae.cfg.tokens) == tuple(meta.values())
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert {k: config[k] for k in meta} == meta
    assert SAE.load(tmp_path / "run").cfg.hookpoint == "post_mlp_residual"


def test_iterable_that_runs_out_stops_cleanly(tmp_path):
    batches = (torch.randn(32, 16) for _ in range(6))
    with pytest.raises(ValueError, match="one-shot iterator"):  # the scale would eat it
        train_sae(batches, small_config(steps=20), tmp_path)
    batches = (torch.randn(32, 16) for _ in range(6))
    sae = train_sae(batches, small_config(steps=20, normalize_activations=False), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 6
    assert isinstance(sae, SAE)


def test_bfloat16_training_is_finite():
    x = torch.randn(256, 16)
    sae = train_sae(x, small_config(steps=10, dtype="bfloat16"))
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_lr_schedule():
    cfg = small_config(steps=100, warmup_steps=10, decay_start=0.8)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == 0 and factors[9] == pytest.approx(0.9)  # lr·s/W: 0 at step 0
    assert factors[10] == 1.0 and factors[50] == 1.0
    assert factors[80] == pytest.approx(1.0) and factors[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    default = TrainConfig(sae=SAEConfig(d_in=768, expansion=16, k=20))
    assert [lr_factor(s, default) for s in (1000, 109_999)] == [1.0, 1.0]  # no decay
    assert default.learning_rate == pytest.approx(2e-4 / np.sqrt(12288 / 2**14))


def test_geometric_median_minimises_distance_sum():
    points = torch.randn(300, 5)
    points[:20] += 50  # outliers pull the mean, not the median
    median = geometric_median(points)

    def cost(p):
        return (points - p).norm(dim=1).sum()

    assert cost(median) < cost(points.mean(0))
    for _ in range(20):
        assert cost(median) <= cost(median + 0.01 * torch.randn(5)) + 1e-3
