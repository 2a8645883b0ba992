"""dictionary_learning ae.pt files convert to SAEs that compute the original formulas."""

from __future__ import annotations

import json

import pytest
import torch

from vlmsae.formats.dictionary_learning import ConvertError, convert_dictionary_learning
from vlmsae.sae import SAE

D, S, K = 12, 48, 4
gen = torch.Generator().manual_seed(0)


def rand(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


X = rand(3, 7, D)


def relu_pre(x, w_SD, b_S, center_D):
    return torch.relu((x - center_D) @ w_SD.t() + b_S)


def layouts():
    enc_w, enc_b, dec_w, b_dec = rand(S, D), rand(S, scale=0.1), rand(D, S), rand(D)
    thr = torch.tensor(0.7)

    def batchtopk(x):
        f = relu_pre(x, enc_w, enc_b, b_dec)
        return f * (f > thr)

    def topk(x):
        f = relu_pre(x, enc_w, enc_b, b_dec)
        top = f.topk(K, dim=-1)
        return torch.zeros_like(f).scatter(-1, top.indices, top.values)

    W_enc, b_enc, W_dec, m_b_dec = rand(D, S), rand(S, scale=0.1), rand(S, D), rand(D)  # noqa: N806

    def matryoshka(x):
        f = torch.relu((x - m_b_dec) @ W_enc + b_enc)
        return f * (f > thr)

    relu_bias = rand(D)

    def relu(x):
        return relu_pre(x, enc_w, enc_b, relu_bias)

    jthr = rand(S).abs()

    def jumprelu(x):
        pre = x @ W_enc + b_enc
        return torch.relu(pre * (pre > jthr))

    common = {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w}
    return {
        "BatchTopKSAE": (
            {**common, "b_dec": b_dec, "k": torch.tensor(K), "threshold": thr},
            batchtopk,
            lambda f: f @ dec_w.t() + b_dec,
            "batchtopk",
        ),
        "AutoEncoderTopK": (
            {**common, "b_dec": b_dec, "k": torch.tensor(K), "threshold": torch.tensor(-1.0)},
            topk,
            lambda f: f @ dec_w.t() + b_dec,
            "topk",
        ),
        "MatroyshkaBatchTopKSAE": (
            {
                "W_enc": W_enc,
                "b_enc": b_enc,
                "W_dec": W_dec,
                "b_dec": m_b_dec,
                "k": torch.tensor(K),
                "threshold": thr,
                "group_sizes": torch.tensor([8, 16, 24]),
            },
            matryoshka,
            lambda f: f @ W_dec + m_b_dec,
            "batchtopk",
        ),
        "AutoEncoder": (
            {**common, "bias": relu_bias},
            relu,
            lambda f: f @ dec_w.t() + relu_bias,
            "relu",
        ),
        "JumpReluAutoEncoder": (
            {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": m_b_dec, "threshold": jthr},
            jumprelu,
            lambda f: f @ W_dec + m_b_dec,
            "jumprelu",
        ),
    }


LAYOUTS = layouts()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_converts_to_the_same_function(tmp_path, name):
    state_dict, encode_ref, decode_ref, sparsity = LAYOUTS[name]
    torch.save(state_dict, tmp_path / "ae.pt")
    sae = convert_dictionary_learning(tmp_path / "ae.pt", hookpoint="post_mlp_residual")
    assert sae.cfg.sparsity == sparsity and (sae.cfg.d_in, sae.cfg.d_sae) == (D, S)
    codes_ref = encode_ref(X)
    assert (codes_ref != 0).any() and (codes_ref == 0).any()
    codes = sae.encode(X)
    torch.testing.assert_close(codes, codes_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(codes), decode_ref(codes_ref), atol=1e-4, rtol=1e-5)
    if name.startswith("Matroyshka"):
        assert sae.cfg.group_sizes == (8, 16, 24)
    sae.save(tmp_path / "out")
    loaded = SAE.load(tmp_path / "out")
    assert loaded.cfg.hookpoint == "post_mlp_residual"
    assert torch.equal(loaded.encode(X), codes)


def test_config_json_names_the_class(tmp_path):
    state_dict = dict(LAYOUTS["BatchTopKSAE"][0], threshold=torch.tensor(0.7))
    torch.save(state_dict, tmp_path / "ae.pt")
    trainer = {"dict_class": "AutoEncoderTopK", "layer": 22, "lm_name": "openai/clip"}
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer}))
    sae = convert_dictionary_learning(tmp_path / "ae.pt")
    assert sae.cfg.sparsity == "topk" and sae.cfg.layer == 22 and sae.cfg.model == "openai/clip"
    assert ((sae.encode(X) != 0).sum(-1) == K).all()
    forced = convert_dictionary_learning(tmp_path / "ae.pt", sparsity="batchtopk")
    assert forced.cfg.sparsity == "batchtopk" and float(forced.threshold) == pytest.approx(0.7)


def test_bad_files(tmp_path):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "ae.pt")
    with pytest.raises(ConvertError, match="unrecognised"):
        convert_dictionary_learning(tmp_path / "ae.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConvertError, match="weights-only"):
        convert_dictionary_learning(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        convert_dictionary_learning(tmp_path / "missing.pt")
