"""The SAE module: sparsity invariants, sparse kernels against dense autograd, shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmsae.sae import SAE, SAEConfig
from vlmsae.sae.sparse import select_batchtopk, select_topk

VARIANTS = [
    ("relu", None),
    ("topk", None),
    ("batchtopk", None),
    ("jumprelu", None),
    ("batchtopk", (0.25, 0.25, 0.5)),
    ("topk", (0.5, 0.5)),
    ("relu", (0.5, 0.5)),
]


def make_sae(sparsity, groups=None, d_in=16, expansion=4, k=4, seed=0):
    cfg = SAEConfig(d_in=d_in, expansion=expansion, sparsity=sparsity, k=k, group_fractions=groups)
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, generator=gen)
    with torch.no_grad():  # non-trivial biases so that the formulas are exercised
        sae.b_enc.normal_(0, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.5, generator=gen)
    return sae


def dense_reference(sae, x_BD, rows, cols):
    """The textbook formulas with a dense mask: codes = relu((x - b_dec) W_enc + b_enc)."""
    pre = (x_BD - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.cfg.sparsity == "relu":
        codes = torch.relu(pre)
    elif sae.cfg.sparsity == "jumprelu":
        codes = torch.relu(pre * (pre > sae.threshold))
    else:
        mask = torch.zeros_like(pre, dtype=torch.bool)
        mask[rows, cols] = True
        codes = torch.relu(pre) * mask
    prefixes, lo, x_hat = [], 0, sae.b_dec
    for hi in sae.cfg.group_ends:
        x_hat = x_hat + codes[:, lo:hi] @ sae.W_dec[lo:hi]
        prefixes.append(x_hat)
        lo = hi
    return codes, prefixes


@pytest.mark.parametrize("sparsity,groups", VARIANTS)
def test_forward_and_gradients_match_dense_formula(sparsity, groups):
    sae = make_sae(sparsity, groups)
    x = torch.randn(12, 16) * 2
    out = sae(x)
    active = out.active
    rows, cols = (active.rows, active.cols) if active is not None else (None, None)
    ref = make_sae(sparsity, groups)
    codes_ref, prefixes_ref = dense_reference(ref, x, rows, cols)
    torch.testing.assert_close(out.codes, codes_ref, atol=1e-5, rtol=1e-5)
    for p, r in zip(out.prefix_x_hats, prefixes_ref, strict=True):
        torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-5)
    weights = torch.rand(len(prefixes_ref)) + 0.5
    target = torch.randn_like(x)
    loss = sum(
        w * ((p - target) ** 2).sum() for w, p in zip(weights, out.prefix_x_hats, strict=True)
    )
    loss_ref = sum(
        w * ((p - target) ** 2).sum() for w, p in zip(weights, prefixes_ref, strict=True)
    )
    loss.backward()
    loss_ref.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g, g_ref = getattr(sae, name).grad, getattr(ref, name).grad
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4, msg=name)


def test_input_gradient_flows_through_sparse_encoder():
    sae = make_sae("topk")
    x = torch.randn(6, 16, requires_grad=True)
    sae(x).x_hat.sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = make_sae("topk")
    rows, cols = select_topk(ref.pre_acts(x_ref.detach()), 4)
    _, prefixes = dense_reference(ref, x_ref, rows, cols)
    prefixes[-1].sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 9), t=st.integers(1, 3), k=st.integers(1, 8), seed=st.integers(0, 99))
def test_topk_has_exactly_k_nonzeros_per_row_any_shape(b, t, k, seed):
    torch.manual_seed(seed)
    sae = make_sae("topk", k=k, seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive
    x = torch.randn(b, t, 16)
    codes = sae.encode(x)
    assert codes.shape == (b, t, 64)
    assert ((codes != 0).sum(-1) == k).all()
    torch.testing.assert_close(sae.decode(codes), sae(x).x_hat)


def test_batchtopk_batch_mode_keeps_k_times_batch():
    sae = make_sae("batchtopk", k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    x = torch.randn(40, 16)
    codes = sae.encode(x, mode="batch")
    assert (codes != 0).sum() == 5 * 40
    per_row = (codes != 0).sum(-1)
    assert per_row.float().mean() == 5 and per_row.min() != per_row.max()  # variable per row
    pre = sae.pre_acts(x)  # the kept entries are exactly the batch's largest
    kept = torch.relu(pre)[codes != 0]
    assert kept.min() >= torch.relu(pre)[codes == 0].max()


def test_batchtopk_threshold_mode_is_per_example():
    sae = make_sae("batchtopk", k=5).eval()
    with pytest.raises(ValueError, match="no inference threshold"):
        sae.encode(torch.randn(3, 16), mode="threshold")
    assert ((sae.encode(torch.randn(3, 16)) != 0).sum(-1) <= 5).all()  # untrained: topk
    sae.threshold.fill_(0.3)
    x = torch.randn(10, 16)
    full = sae.encode(x)
    singles = torch.cat([sae.encode(x[i : i + 1]) for i in range(10)])
    torch.testing.assert_close(full, singles)
    pre = sae.pre_acts(x)
    torch.testing.assert_close(full, pre * (pre > 0.3))


def test_select_helpers_agree_with_sorting():
    pre = torch.randn(7, 11)
    rows, cols = select_batchtopk(pre, 3)
    assert len(rows) == 21
    assert torch.equal(
        torch.sort(pre.flatten(), descending=True).values[:21].sort().values,
        pre[rows, cols].sort().values,
    )
    rows, cols = select_topk(pre, 3)
    assert torch.equal(
        pre[rows, cols].view(7, 3).sort(-1).values, pre.topk(3, -1).values.sort(-1).values
    )


def test_decoder_constraints():
    sae = make_sae("batchtopk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) * 3)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad_()
    torch.testing.assert_close(
        (sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64), atol=1e-6, rtol=0
    )


def test_sparse_encode_matches_dense():
    for sparsity in ("topk", "relu"):
        sae = make_sae(sparsity)
        x = torch.randn(2, 3, 16)
        active = sae.encode_sparse(x)
        torch.testing.assert_close(active.to_dense(), sae.encode(x).reshape(6, 64))
        torch.testing.assert_close(sae.decode(active), sae.decode(sae.encode(x)).reshape(6, 16))


def test_bfloat16_autocast_is_close_to_fp32():
    sae = make_sae("batchtopk")
    x = torch.randn(32, 16)
    ref = sae(x).x_hat
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    assert out.x_hat.dtype == torch.float32
    assert (out.x_hat - ref).norm() / ref.norm() < 0.1


def test_bad_inputs():
    sae = make_sae("topk")
    with pytest.raises(ValueError, match="d_in=16"):
        sae.encode(torch.randn(3, 15))
    with pytest.raises(ValueError, match="mode"):
        sae.encode(torch.randn(3, 16), mode="nope")
    with pytest.raises(ValueError, match="width 3"):
        sae.decode(torch.randn(2, 3))


def test_batchtopk_candidate_path_is_exact():
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(256, 8192, generator=gen)  # 2M entries: the sampled-cut path
    pre[3, :100] += 10  # one row far above the rest
    rows, cols = select_batchtopk(pre, 20)
    flat = pre.flatten().topk(256 * 20).indices.sort().values
    assert torch.equal(rows * 8192 + cols, flat)


@pytest.mark.parametrize("groups", [None, (0.25, 0.25, 0.5)])
def test_reused_buffers_and_recycled_grads_change_nothing(groups):
    """A step that writes into kept buffers and last step's gradients (what train_step
    does) gives the same pre-activations, losses and gradients as a plain one, in fp32
    and bf16 autocast, also when the kept buffers hold garbage."""
    from vlmsae.train.losses import reconstruction_losses

    x_BD = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    for bf16 in (False, True):
        plain, reused = make_sae("batchtopk", groups), make_sae("batchtopk", groups)
        for step in range(2):
            grads = []
            for sae, reuse in ((plain, False), (reused, True)):
                if reuse:
                    sae.recycle_grads_()
                    for buf in sae._scratch_buffers.values():
                        buf.fill_(float("nan"))  # whatever the last step left
                else:
                    sae.zero_grad(set_to_none=True)
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    out = sae(x_BD, mode="batch", return_codes=False, reuse_buffers=reuse)
                    loss = reconstruction_losses(x_BD, out).sum()
                loss.backward()
                grads.append(
                    (out.pre_acts.clone(), loss.detach(), *[p.grad for p in sae.parameters()])
                )
            for a, b in zip(*grads, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            if step == 1:  # the backward wrote into the recycled storage
                assert reused._scratch_buffers == {}
        reused.release_buffers_()
