"""What makes the CPU training step fast changes no value: the optimizer walks the transposed
``W_enc`` in memory order and is otherwise torch's Adam (the same updates bit for bit, the
same ``state_dict``, so trainer states written before and after load into either); the
Matryoshka loss and decode keep their ``[G, B, D]`` temporaries in buffers from one step to
the next (the same weights bit for bit as fresh temporaries, whatever the buffers held)."""

from __future__ import annotations

import pytest
import torch

from vlmsae.sae import SAE, SAEConfig, scratch, sparse
from vlmsae.train import TrainConfig, losses
from vlmsae.train.optim import LayoutAdam
from vlmsae.train.state import TrainState
from vlmsae.train.step import make_optimizer, train_step


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.nn.Parameter(torch.randn(48, 16, generator=gen).t())  # [16, 48] view
    w_dec = torch.nn.Parameter(torch.randn(48, 16, generator=gen))
    bias = torch.nn.Parameter(torch.randn(48, generator=gen))
    return [w_enc, w_dec, bias]


def _grads(params, step: int, transposed: bool) -> None:
    """Gradients of step ``step``; W_enc's in its own layout ([S, D] storage, as the
    training step writes it) or plain [D, S] (``transposed=False``)."""
    gen = torch.Generator().manual_seed(100 + step)
    w_enc, w_dec, bias = params
    w_enc.grad = torch.randn(48, 16, generator=gen).t()
    if not transposed:
        w_enc.grad = w_enc.grad.contiguous()
    w_dec.grad = torch.randn(48, 16, generator=gen)
    bias.grad = torch.randn(48, generator=gen)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("transposed_grad", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_layout_adam_is_torch_adam_bit_for_bit(fused, transposed_grad, amsgrad):
    ours, theirs = _params(), _params()
    kw = {"lr": 1e-2, "betas": (0.9, 0.99), "fused": fused, "amsgrad": amsgrad}
    opt_ours, opt_theirs = LayoutAdam(ours, **kw), torch.optim.Adam(theirs, **kw)
    for step in range(4):
        _grads(ours, step, transposed_grad)
        _grads(theirs, step, transposed_grad)
        opt_ours.step()
        opt_theirs.step()
    assert ours[0].stride() == (1, 16)  # still the transposed layout
    lists: list[list[torch.Tensor]] = [[] for _ in range(6)]
    opt_ours._init_group(opt_ours.param_groups[0], *lists)  # what the (fused) step walks
    walked = [t for tensors in lists[:5] for t in tensors]
    assert len(walked) == (15 if amsgrad else 12)
    assert all(t.is_contiguous() for t in walked) == transposed_grad
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    sd_ours, sd_theirs = opt_ours.state_dict(), opt_theirs.state_dict()
    assert sd_ours["param_groups"] == sd_theirs["param_groups"]
    for idx, state in sd_theirs["state"].items():
        for name, value in state.items():
            assert torch.equal(sd_ours["state"][idx][name], value), name
            assert sd_ours["state"][idx][name].shape == value.shape
    assert opt_ours.state[ours[0]]["exp_avg"].stride() == ours[0].stride()
    # a state saved by torch's Adam loads into LayoutAdam and steps on identically
    reloaded = _params()
    for p, q in zip(reloaded, ours, strict=True):
        p.data.copy_(q.data)
    opt_reloaded = LayoutAdam(reloaded, **kw)
    opt_reloaded.load_state_dict(sd_theirs)
    _grads(reloaded, 9, transposed_grad)
    _grads(ours, 9, transposed_grad)
    opt_reloaded.step()
    opt_ours.step()
    for a, b in zip(reloaded, ours, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_steps_equal_those_with_torch_adam(dtype):
    cfg_sae = SAEConfig(d_in=16, expansion=4, k=4, group_fractions=(0.25, 0.75))
    cfg = TrainConfig(sae=cfg_sae, steps=5, batch_size=32, dtype=dtype, progress=False)
    x_BD = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    saes = [SAE(cfg_sae, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    opt_ours = make_optimizer(saes[0], cfg)
    assert isinstance(opt_ours, LayoutAdam)
    opt_theirs = torch.optim.Adam(saes[1].parameters(), lr=opt_ours.param_groups[0]["lr"],
                                  betas=cfg.adam_betas, fused=True)  # fmt: skip
    for sae, opt in ((saes[0], opt_ours), (saes[1], opt_theirs)):
        state = TrainState(0, torch.zeros(cfg_sae.d_sae, dtype=torch.int64))
        for _ in range(4):
            train_step(sae, opt, x_BD, state, cfg)
    for name, value in saes[0].state_dict().items():
        assert torch.equal(value, saes[1].state_dict()[name]), name
    saes[0].release_buffers_()


@pytest.mark.parametrize("groups", [None, (0.25, 0.25, 0.5)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kept_loss_and_decode_buffers_change_no_weight(monkeypatch, groups, dtype):
    cfg_sae = SAEConfig(d_in=16, expansion=4, k=4, group_fractions=groups)
    cfg = TrainConfig(sae=cfg_sae, steps=5, batch_size=32, dtype=dtype, progress=False)
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(32, 16, generator=gen) + 1.0 for _ in range(4)]
    kept_buffer, kept = losses._buffer, sparse._kept

    def train(fresh: bool) -> SAE:
        sae = SAE(cfg_sae, generator=torch.Generator().manual_seed(0))
        opt, state = make_optimizer(sae, cfg), TrainState(0, torch.zeros(16 * 4, dtype=torch.int64))
        if fresh:  # every temporary a new tensor
            monkeypatch.setattr(
                losses, "_buffer", lambda n, like, reuse: kept_buffer(n, like, False)
            )
            monkeypatch.setattr(sparse, "_kept", lambda n, s, like, reuse: kept(n, s, like, False))
        for x_BD in batches:
            for key, buf in scratch._SCRATCH.items():  # whatever the last step left
                if key[1].startswith(("loss:", "decode:")) and buf.is_floating_point():
                    buf.fill_(float("nan"))
            train_step(sae, opt, x_BD, state, cfg)
        monkeypatch.undo()
        return sae

    SAE(cfg_sae).release_buffers_()  # none left by other tests
    with_buffers = train(fresh=False)
    kept_names = {key[1].split(":(")[0] for key in scratch._SCRATCH}
    assert {"loss:diff", "loss:grad", "decode:out"} <= kept_names  # the buffers were kept
    assert ("decode:grad" in kept_names) == (groups is not None)  # a sum over groups
    fresh = train(fresh=True)
    for name, value in with_buffers.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    with_buffers.release_buffers_()
    assert not scratch._SCRATCH
