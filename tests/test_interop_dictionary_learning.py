"""Round trips with dictionary_learning, checked by the installed package itself.

Its own ``trainSAE`` trains each of its SAE classes for a few steps on scaled, shifted
random activations (with ``normalize_activations=True``, so that the scale it folds into
``ae.pt`` before saving is exercised) and writes ``ae.pt`` + ``config.json`` and
``checkpoints/ae_<step>.pt`` as it always does; vlmsae imports them. The reverse: vlmsae
exports, and each class's own ``from_pretrained`` loads the file.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlmsae.formats.dictionary_learning import convert_dictionary_learning
from vlmsae.formats.export import export_sae
from vlmsae.sae import SAE, SAEConfig

dl = pytest.importorskip(
    "dictionary_learning", reason="install the interop extra: pip install -e .[interop]"
)
from dictionary_learning import AutoEncoder, JumpReluAutoEncoder  # noqa: E402
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer  # noqa: E402
from dictionary_learning.trainers.jumprelu import JumpReluTrainer  # noqa: E402
from dictionary_learning.trainers.matryoshka_batch_top_k import (  # noqa: E402
    MatryoshkaBatchTopKSAE,
    MatryoshkaBatchTopKTrainer,
)
from dictionary_learning.trainers.standard import StandardTrainer  # noqa: E402
from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer  # noqa: E402

D, S, K, STEPS = 32, 128, 6, 12
TOL = 1e-5
COMMON = dict(steps=STEPS, activation_dim=D, dict_size=S, layer=22, lm_name="org/model")
# name -> (trainer config, dictionary_learning class, our sparsity)
TRAINERS = {
    "BatchTopKSAE": (
        dict(trainer=BatchTopKTrainer, k=K, warmup_steps=2, threshold_start_step=2, seed=0),
        BatchTopKSAE,
        "batchtopk",
    ),
    "AutoEncoderTopK": (
        dict(trainer=TopKTrainer, k=K, warmup_steps=2, threshold_start_step=2, seed=0),
        AutoEncoderTopK,
        "topk",
    ),
    "MatryoshkaBatchTopKSAE": (
        dict(
            trainer=MatryoshkaBatchTopKTrainer,
            k=K,
            group_fractions=[0.25, 0.75],
            warmup_steps=2,
            threshold_start_step=2,
            seed=0,
        ),
        MatryoshkaBatchTopKSAE,
        "batchtopk",
    ),
    "AutoEncoder": (
        dict(trainer=StandardTrainer, warmup_steps=2, sparsity_warmup_steps=2, seed=0),
        AutoEncoder,
        "relu",
    ),
    "JumpReluAutoEncoder": (
        dict(trainer=JumpReluTrainer, warmup_steps=2, sparsity_warmup_steps=2, seed=0),
        JumpReluAutoEncoder,
        "jumprelu",
    ),
}


def _batches():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(D, generator=g)
    while True:  # raw activations: far from unit norm, not centred
        yield 7.0 * torch.randn(256, D, generator=g) + 3.0 * mean


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """dictionary_learning's own trainSAE run: save_dir/trainer_<i>/{ae.pt, config.json}."""
    from dictionary_learning.training import trainSAE

    root = tmp_path_factory.mktemp("dl")
    configs = [{**COMMON, **cfg, "device": "cpu"} for cfg, _, _ in TRAINERS.values()]
    trainSAE(
        data=_batches(),
        trainer_configs=configs,
        steps=STEPS,
        save_steps=[STEPS - 2],
        save_dir=str(root),
        normalize_activations=True,
        device="cpu",
    )
    return {name: root / f"trainer_{i}" for i, name in enumerate(TRAINERS)}


def _inputs(seed: int = 1) -> torch.Tensor:
    noise = torch.randn(256, D, generator=torch.Generator().manual_seed(seed))
    return next(iter(_batches())) + 0.1 * noise


def _compare(ours: SAE, theirs, x: torch.Tensor, label: str) -> None:
    with torch.no_grad():
        codes, theirs_codes = ours.encode(x), theirs.encode(x)
        assert torch.equal(codes > 0, theirs_codes > 0), label
        assert (codes > 0).any(), label
        code_diff = (codes - theirs_codes).abs().max().item()
        scale = theirs_codes.abs().max().item()
        recon_diff = (ours.decode(codes) - theirs.decode(theirs_codes)).abs().max().item()
    print(
        f"{label}: max |codes| diff {code_diff:.2e} (codes <= {scale:.1f}), x_hat {recon_diff:.2e}"
    )
    assert code_diff < TOL * max(1.0, scale) and recon_diff < TOL * 100, label


@pytest.mark.parametrize("name", list(TRAINERS))
def test_checkpoint_saved_by_dictionary_learning_imports_with_equal_outputs(trained, name):
    _, cls, sparsity = TRAINERS[name]
    folder = trained[name]
    assert json.loads((folder / "config.json").read_text())["trainer"]["dict_class"] == name
    theirs = cls.from_pretrained(str(folder / "ae.pt"))
    ours = convert_dictionary_learning(folder / "ae.pt")
    assert ours.cfg.sparsity == sparsity and ours.cfg.layer == 22 and ours.cfg.model == "org/model"
    if name == "MatryoshkaBatchTopKSAE":
        assert ours.cfg.group_sizes == (32, 96)
    if sparsity == "batchtopk":
        assert ours.has_threshold  # trained past threshold_start_step
    _compare(ours, theirs.eval(), _inputs(), f"dictionary_learning import {name}")
    # SAE.from_pretrained on the folder converts on load too
    again = SAE.from_pretrained(folder)
    assert torch.equal(again.encode(_inputs()), ours.encode(_inputs()))


def test_folder_laid_out_like_the_papers_release(trained, tmp_path):
    """mateuszpach/sae-for-vlm: <variant>/<run>/trainer_0/{config.json, checkpoints/ae_N.pt}."""
    run = "imagenet_train_activations_clip-vit-large-patch14-336_22_post_mlp_residual"
    sub = f"batch_top_k_{K}_x4/{run}_batch_top_k_{K}_x4/trainer_0"
    dst = tmp_path / "sae-for-vlm" / sub
    (dst / "checkpoints").mkdir(parents=True)
    src = trained["BatchTopKSAE"]
    shutil.copy(src / "config.json", dst / "config.json")
    ckpt = next((src / "checkpoints").glob("ae_*.pt"))
    shutil.copy(ckpt, dst / "checkpoints" / ckpt.name)
    ours = SAE.from_pretrained(tmp_path / "sae-for-vlm", subfolder=sub)
    theirs = BatchTopKSAE.from_pretrained(str(dst / "checkpoints" / ckpt.name)).eval()
    _compare(ours, theirs, _inputs(), "paper release layout (BatchTopK)")
    with pytest.raises(ValueError, match="holds no SAE.*SAE folders found: batch_top_k"):
        SAE.from_pretrained(tmp_path / "sae-for-vlm")


def _random_sae(sparsity: str, **kw) -> SAE:
    g = torch.Generator().manual_seed(11)
    sae = SAE(
        SAEConfig(d_in=D, d_sae=S, sparsity=sparsity, k=K, layer=22, model="m", **kw), generator=g
    )
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if sparsity == "batchtopk":
            sae.threshold.fill_(0.5)
        if sparsity == "jumprelu":
            sae.threshold.copy_(torch.rand(S, generator=g))
    return sae.eval()


EXPORTS = {
    "BatchTopKSAE": (dict(sparsity="batchtopk"), BatchTopKSAE),
    "AutoEncoderTopK": (dict(sparsity="topk"), AutoEncoderTopK),
    "MatryoshkaBatchTopKSAE": (
        dict(sparsity="batchtopk", group_fractions=(0.25, 0.75)),
        MatryoshkaBatchTopKSAE,
    ),
    "AutoEncoder": (dict(sparsity="relu"), AutoEncoder),
    "JumpReluAutoEncoder": (dict(sparsity="jumprelu"), JumpReluAutoEncoder),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_loads_in_dictionary_learning_with_equal_outputs(tmp_path, name):
    kw, cls = EXPORTS[name]
    sae = _random_sae(**kw)
    assert export_sae(sae, tmp_path, "dictionary_learning") is None
    assert json.loads((tmp_path / "config.json").read_text())["trainer"]["dict_class"] == name
    theirs = cls.from_pretrained(str(tmp_path / "ae.pt")).eval()
    _compare(sae, theirs, _inputs(2), f"dictionary_learning export {name}")
    back = convert_dictionary_learning(tmp_path / "ae.pt")  # and back again
    _compare(back, theirs, _inputs(2), f"dictionary_learning export+import {name}")


def test_untrained_batchtopk_export(tmp_path):
    sae = SAE(SAEConfig(d_in=D, d_sae=S, sparsity="batchtopk", k=K)).eval()
    note = export_sae(sae, tmp_path / "plain", "dictionary_learning")
    assert "AutoEncoderTopK" in note  # not BatchTopKSAE, which would encode by threshold -1
    theirs = AutoEncoderTopK.from_pretrained(str(tmp_path / "plain" / "ae.pt"))
    _compare(sae, theirs, _inputs(3), "untrained BatchTopK as AutoEncoderTopK")
    matryoshka = SAE(SAEConfig(d_in=D, d_sae=S, k=K, group_fractions=(0.5, 0.5))).eval()
    with pytest.raises(ValueError, match="trained threshold"):
        export_sae(matryoshka, tmp_path / "m", "dictionary_learning")
    assert not (tmp_path / "m" / "ae.pt").exists()
