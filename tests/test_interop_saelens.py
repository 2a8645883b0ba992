"""Round trips with SAELens, checked by the installed ``sae_lens`` package itself.

``make test`` installs the ``interop`` extra (sae-lens, dictionary-learning); the export is
loaded with SAELens's own ``SAE.load_from_disk`` and the reverse direction reads folders
written by SAELens's own ``save_model``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vlmsae.formats.export import export_sae
from vlmsae.sae import SAE, SAEConfig

sae_lens = pytest.importorskip(
    "sae_lens", reason="install the interop extra: pip install -e .[interop]"
)

D, S, K = 24, 96, 5
TOL = 1e-5
CASES = {
    "topk": dict(sparsity="topk"),
    "batchtopk": dict(sparsity="batchtopk"),
    "matryoshka": dict(sparsity="batchtopk", group_fractions=(0.25, 0.75)),
    "jumprelu": dict(sparsity="jumprelu"),
    "relu": dict(sparsity="relu"),
}


def _random_sae(seed: int, threshold: float | None = 0.4, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(
        SAEConfig(
            d_in=D,
            d_sae=S,
            k=K,
            model="org/model",
            hookpoint="post_mlp_residual",
            layer=22,
            tokens="all",
            **kw,
        ),
        generator=g,
    )
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if sae.cfg.sparsity == "batchtopk" and threshold is not None:
            sae.threshold.fill_(threshold)
        if sae.cfg.sparsity == "jumprelu":
            sae.threshold.copy_(torch.rand(S, generator=g))
    return sae.eval()


def _inputs(seed: int = 1) -> torch.Tensor:
    return 2.0 * torch.randn(64, D, generator=torch.Generator().manual_seed(seed)) + 0.5


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_in_saelens_with_equal_outputs(tmp_path, name):
    sae = _random_sae(0, **CASES[name])
    note = export_sae(sae, tmp_path, "saelens")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    expected = {"relu": "StandardSAE", "topk": "TopKSAE"}.get(name, "JumpReLUSAE")
    assert type(theirs).__name__ == expected
    assert (note is not None) == (name in ("batchtopk", "matryoshka"))
    x = _inputs()
    with torch.no_grad():
        codes, theirs_codes = sae.encode(x), theirs.encode(x)
        assert torch.equal(codes > 0, theirs_codes > 0)  # the same latents fire
        assert (codes > 0).any()
        code_diff = (codes - theirs_codes).abs().max().item()
        recon_diff = (sae.decode(codes) - theirs.decode(theirs_codes)).abs().max().item()
    print(f"saelens export {name}: max |codes| diff {code_diff:.2e}, x_hat {recon_diff:.2e}")
    assert code_diff < TOL and recon_diff < TOL
    back = SAE.from_pretrained(tmp_path)  # vlmsae -> SAELens -> vlmsae restores the config
    assert back.cfg == sae.cfg
    assert torch.equal(back.encode(x), codes)


def test_untrained_batchtopk_exports_as_topk_and_says_so(tmp_path):
    sae = _random_sae(3, threshold=None, sparsity="batchtopk")
    note = export_sae(sae, tmp_path, "saelens")
    assert "no inference threshold" in note and "'topk'" in note
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = _inputs()
    with torch.no_grad():
        assert (sae.encode(x) - theirs.encode(x)).abs().max() < TOL


def _saelens_model(arch: str, seed: int, **cfg_kw):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    cls, cfg_cls = {
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
    }[arch]
    torch.manual_seed(seed)
    model = cls(cfg_cls(d_in=D, d_sae=S, **cfg_kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.3 * torch.randn_like(p) + (0.2 if name == "threshold" else 0.0))
    return model


SAELENS_CASES = {
    "standard": ("standard", {}),
    "standard-no-b_dec-centring": ("standard", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {"k": K}),
    "topk-rescaled-by-decoder-norm": ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
    "jumprelu": ("jumprelu", {}),
}


@pytest.mark.parametrize("name", list(SAELENS_CASES))
def test_sae_saved_by_saelens_loads_in_vlmsae(tmp_path, name):
    arch, kw = SAELENS_CASES[name]
    theirs = _saelens_model(arch, 5, **kw)
    theirs.save_model(tmp_path)
    ours = SAE.from_pretrained(tmp_path)
    x = _inputs(2)
    with torch.no_grad():
        codes, theirs_codes = ours.encode(x), theirs.encode(x)
        assert torch.equal(codes > 0, theirs_codes > 0)
        code_diff = (codes - theirs_codes).abs().max().item()
        recon_diff = (ours.decode(codes) - theirs.decode(theirs_codes)).abs().max().item()
    print(f"saelens import {name}: max |codes| diff {code_diff:.2e}, x_hat {recon_diff:.2e}")
    assert code_diff < TOL and recon_diff < TOL


def test_saelens_runtime_normalisation_is_refused(tmp_path):
    theirs = _saelens_model("standard", 6, normalize_activations="layer_norm")
    theirs.save_model(tmp_path)
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        SAE.from_pretrained(tmp_path)


def test_cli_export_prints_the_note_and_saelens_reads_it(tmp_path):
    sae = _random_sae(7, sparsity="batchtopk", group_fractions=(0.25, 0.75))
    sae.save(tmp_path / "sae")
    out = tmp_path / "lens"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmsae",
            "export",
            str(tmp_path / "sae"),
            "--format",
            "saelens",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "note: BatchTopK is written as SAELens 'jumprelu'" in run.stdout
    assert "Matryoshka" in run.stdout
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.22.hook_resid_post"
    theirs = sae_lens.SAE.load_from_disk(str(out))
    x = _inputs(3)
    with torch.no_grad():
        assert (SAE.load(tmp_path / "sae").encode(x) - theirs.encode(x)).abs().max() < TOL


@pytest.mark.parametrize("matryoshka", [False, True])
def test_batchtopk_trained_in_saelens_loads_as_saelens_saves_it(tmp_path, matryoshka):
    """SAELens's own BatchTopK training SAE, saved by its ``save_inference_model`` (a JumpReLU
    with the global threshold, decoder norms folded), computes the same in vlmsae."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    cls, cfg = BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=K)
    if matryoshka:
        from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig

        cls = MatryoshkaBatchTopKTrainingSAE
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=K, matryoshka_widths=[24, S])
    torch.manual_seed(9)
    trained = cls(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.3 * torch.randn_like(p))
        trained.W_dec.mul_(torch.rand(S, 1) + 0.5)  # not unit norm: folded when saving
        trained.topk_threshold.fill_(0.4)
    trained.save_inference_model(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    ours = SAE.from_pretrained(tmp_path)
    assert ours.cfg.sparsity == "jumprelu"
    x = _inputs(4)
    with torch.no_grad():
        codes, theirs_codes = ours.encode(x), theirs.encode(x)
        assert torch.equal(codes > 0, theirs_codes > 0) and (codes > 0).any()
        code_diff = (codes - theirs_codes).abs().max().item()
        recon_diff = (ours.decode(codes) - theirs.decode(theirs_codes)).abs().max().item()
    label = "matryoshka " if matryoshka else ""
    print(
        f"saelens {label}batchtopk import: max |codes| diff {code_diff:.2e}, x_hat {recon_diff:.2e}"
    )
    assert code_diff < TOL and recon_diff < TOL


def test_batchtopk_with_thresholds_edited_in_saelens_loads_as_jumprelu(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = _random_sae(12, sparsity="batchtopk")
    export_sae(sae, tmp_path, "saelens")
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    tensors["threshold"] = tensors["threshold"].clone()
    tensors["threshold"][:10] = 2.0  # no longer one global threshold
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    ours = SAE.from_pretrained(tmp_path)
    assert ours.cfg.sparsity == "jumprelu"
    x = _inputs(6)
    with torch.no_grad():
        assert (ours.encode(x) - theirs.encode(x)).abs().max() < TOL
