"""SAE checkpoints round-trip bit-exactly; configs reject bad values with a clear message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vlmsae
from vlmsae.sae import SAE, CheckpointError, SAEConfig
from vlmsae.sae.checkpoint import read_config
from vlmsae.train import TrainConfig

VARIANTS = [
    dict(sparsity="relu"),
    dict(sparsity="topk", k=3),
    dict(sparsity="batchtopk", k=3),
    dict(sparsity="jumprelu"),
    dict(sparsity="batchtopk", k=3, group_fractions=(0.25, 0.25, 0.5)),
    dict(sparsity="topk", k=3, group_fractions=(0.5, 0.5), group_weights=(1.0, 2.0)),
    dict(sparsity="jumprelu", group_fractions=(0.25, 0.75)),
]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: "-".join(map(str, k.values())))
def test_round_trip_is_bit_exact(tmp_path, kwargs):
    cfg = SAEConfig(d_in=12, d_sae=40, hookpoint="post_mlp_residual", layer=-2, **kwargs)
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if cfg.sparsity == "batchtopk":
            sae.threshold.fill_(0.123456789)
    sae.save(tmp_path / "ckpt", train={"steps": 5})
    loaded = vlmsae.SAE.load(tmp_path / "ckpt")
    assert loaded.cfg == cfg and not loaded.training
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(2, 5, 12)
    sae.eval()
    assert torch.equal(sae.encode(x), loaded.encode(x))
    assert torch.equal(sae.decode(sae.encode(x)), loaded.decode(loaded.encode(x)))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["schema"] == 1 and config["version"] == vlmsae.__version__
    assert config["d_in"] == 12 and config["d_sae"] == 40 and config["layer"] == -2
    assert config["group_sizes"] == list(cfg.group_sizes) and config["train"] == {"steps": 5}
    sae.save_pretrained(tmp_path / "pretrained")  # the name transformers / SAELens users type
    again = SAE.from_pretrained(str(tmp_path / "pretrained"))
    assert all(torch.equal(t, again.state_dict()[n]) for n, t in sae.state_dict().items())


def test_weights_file_layout(tmp_path):
    sae = SAE(SAEConfig(d_in=8, expansion=2, sparsity="batchtopk", k=2))
    sae.save(tmp_path)
    tensors = load_file(str(tmp_path / "sae.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (8, 16),
        "b_enc": (16,),
        "W_dec": (16, 8),
        "b_dec": (8,),
        "threshold": (),
    }


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="convert"):
        SAE.load(tmp_path)
    sae = SAE(SAEConfig(d_in=8, d_sae=16, sparsity="topk", k=2))
    sae.save(tmp_path)
    config = read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "schema": 99}))
    with pytest.raises(CheckpointError, match="upgrade"):
        SAE.load(tmp_path)
    config["sae"]["d_in"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        SAE.load(tmp_path)


def test_config_derives_sizes():
    cfg = SAEConfig(d_in=768, expansion=16, group_fractions=(0.0625, 0.125, 0.25, 0.5625))
    assert cfg.d_sae == 12288 and cfg.group_sizes == (768, 1536, 3072, 6912)
    assert cfg.group_ends[-1] == 12288 and cfg.is_matryoshka and cfg.arch == "matryoshka"
    inat = SAEConfig(d_in=768, d_sae=12288, group_fractions=(0.002, 0.009, 0.035, 0.189, 0.765))
    assert sum(inat.group_sizes) == 12288 and min(inat.group_sizes) > 0
    plain = SAEConfig(d_in=4, d_sae=8, k=2)
    assert plain.group_sizes == (8,) and not plain.is_matryoshka
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    train = TrainConfig(sae=cfg, steps=10, batch_size=32)
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train
    assert train.learning_rate == pytest.approx(2e-4 / (12288 / 2**14) ** 0.5)
    assert train.k_aux == 384


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_in=0, d_sae=8), "d_in"),
        (dict(d_in=8), "d_sae=... or expansion"),
        (dict(d_in=8, d_sae=-4), "d_sae must be positive"),
        (dict(d_in=8, expansion=0), "expansion must be positive"),
        (dict(d_in=8, d_sae=16, expansion=4), "contradicts"),
        (dict(d_in=8, d_sae=16, sparsity="gelu"), "sparsity must be one of"),
        (dict(d_in=8, d_sae=16, k=17), "k=17 is larger than d_sae=16"),
        (dict(d_in=8, d_sae=16, k=0), "positive k"),
        (dict(d_in=8, d_sae=16, k=2, group_fractions=(0.5, 0.4)), "sum to 1"),
        (dict(d_in=8, d_sae=16, k=2, group_fractions=(1.2, -0.2)), "positive"),
        (dict(d_in=8, d_sae=16, k=2, group_fractions=(0.01, 0.99)), "at least one latent"),
        (dict(d_in=8, d_sae=16, k=2, group_sizes=(4, 4)), "sum to 8, not d_sae=16"),
        (dict(d_in=8, d_sae=16, k=2, group_fractions=(0.5, 0.5), group_weights=(1,)), "one per"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps must be positive"),
        (dict(batch_size=-1), "batch_size must be positive"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(decay_start=1.5), "fraction"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(sae=SAEConfig(d_in=4, d_sae=8, k=2), **kwargs)


def test_config_is_frozen():
    cfg = SAEConfig(d_in=4, d_sae=8, k=2)
    with pytest.raises(AttributeError):
        cfg.k = 3
