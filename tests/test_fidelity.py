"""The training recipe is the paper's: a reference update written out from its formulas.

The reference below is dense and plain (no sparse kernels), written from the definitions in
the paper's code (sae-for-vlm's ``sae_train.py`` and scripts through dictionary_learning's
``trainSAE`` and BatchTopK / Matryoshka trainers), not copied from it:

- inputs divided by ``s = sqrt(mean over batches of mean ‖x‖²)``; the saved SAE has its
  biases and threshold multiplied by ``s``;
- ``b_dec`` starts at the geometric median of the first (scaled) batch, ``W_enc = W_decᵀ``;
- BatchTopK keeps the ``k·B`` largest ReLU'd pre-activations of the batch;
- the threshold is an EMA (β) of the smallest kept code, from the steps after
  ``threshold_start_step``;
- the Matryoshka loss is ``Σ_g (1/G) L_g / G``; AuxK (α) uses the latents dead *after*
  counting this batch, ``k_aux = d_in // 2`` of them, normalised by the residual's variance;
- Adam at ``lr · s / W`` during warm-up (0 at step 0), the decoder-parallel gradient
  removed, the gradient clipped to norm 1, decoder rows renormalised after the step.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlmsae.sae import SAE, SAEConfig
from vlmsae.train import TrainConfig
from vlmsae.train.run import train_sae
from vlmsae.train.step import geometric_median

D, S, K, B, STEPS = 12, 48, 3, 64, 7


def reference_train(batches, cfg: TrainConfig, init: SAE) -> dict[str, torch.Tensor]:
    """Train from ``init``'s decoder on ``batches`` the reference way; folded weights."""
    scfg = cfg.sae
    s = math.sqrt(sum(float((x**2).sum(1).mean()) for x in batches) / len(batches))
    W_dec = init.W_dec.detach().clone().requires_grad_()
    W_enc = init.W_dec.detach().clone().t().contiguous().requires_grad_()
    b_enc = torch.zeros(S, requires_grad=True)
    b_dec = geometric_median(batches[0] / s).clone().requires_grad_()
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=cfg.learning_rate, betas=cfg.adam_betas)
    since_fired = torch.zeros(S, dtype=torch.long)
    threshold = torch.tensor(-1.0)
    ends = [0, *scfg.group_ends]
    G = len(ends) - 1
    for step, raw in enumerate(batches[:STEPS]):
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, step / cfg.warmup_steps)
        x = raw / s
        post = torch.relu((x - b_dec) @ W_enc + b_enc)
        flat = post.flatten()
        kept = flat.topk(K * x.shape[0]).indices
        f = torch.zeros_like(flat).scatter(0, kept, flat[kept]).reshape(post.shape)
        if step > cfg.threshold_start_step:
            smallest = f[f > 0].min().detach()
            b = cfg.threshold_beta
            threshold = smallest if threshold < 0 else b * threshold + (1 - b) * smallest
        x_hat, recon = b_dec.expand_as(x), 0.0
        for g in range(G):
            x_hat = x_hat + f[:, ends[g] : ends[g + 1]] @ W_dec[ends[g] : ends[g + 1]]
            recon = recon + (x - x_hat).pow(2).sum(-1).mean() * (1.0 / G)
        recon = recon / G
        since_fired += x.shape[0]
        since_fired[f.sum(0) > 0] = 0
        dead = since_fired >= cfg.dead_after
        aux = torch.zeros(())
        if dead.any():
            k_aux = min(D // 2, int(dead.sum()))
            cand = torch.where(dead[None], post, torch.tensor(-math.inf))
            vals, idx = cand.topk(k_aux, dim=-1)
            aux_acts = torch.zeros_like(post).scatter(-1, idx, vals)
            residual = (x - x_hat).detach()
            err = (residual - aux_acts @ W_dec).pow(2).sum(-1).mean()
            aux = err / (residual - residual.mean(0)).pow(2).sum(-1).mean()
        loss = recon + cfg.aux_alpha * aux
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            unit = W_dec / W_dec.norm(dim=1, keepdim=True)
            W_dec.grad -= (W_dec.grad * unit).sum(1, keepdim=True) * unit
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    return {
        "W_enc": W_enc.detach(),
        "W_dec": W_dec.detach(),
        "b_enc": b_enc.detach() * s,
        "b_dec": b_dec.detach() * s,
        "threshold": threshold * s,
    }


@pytest.mark.parametrize("fractions", [None, (0.25, 0.25, 0.5)], ids=["batchtopk", "matryoshka"])
def test_training_equals_the_reference_update(fractions):
    gen = torch.Generator().manual_seed(0)
    scale_D = torch.linspace(0.5, 40.0, D)  # raw activations far from unit norm
    batches = [torch.randn(B, D, generator=gen) * scale_D + 3.0 for _ in range(STEPS)]
    sae_cfg = SAEConfig(d_in=D, d_sae=S, sparsity="batchtopk", k=K, group_fractions=fractions)
    cfg = TrainConfig(
        sae=sae_cfg,
        steps=STEPS,
        batch_size=B,
        lr=3e-3,
        warmup_steps=3,
        threshold_start_step=2,
        dead_after=B,  # a latent silent for one batch is dead: AuxK works from step 0
        progress=False,
    )
    ours = train_sae(list(batches), cfg)
    init = SAE(sae_cfg, generator=torch.Generator().manual_seed(cfg.seed))
    expected = reference_train(batches, cfg, init)
    for name, want in expected.items():
        got = ours.state_dict()[name]
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (name, (got - want).abs().max())
    assert float(ours.threshold) > 0


def test_saved_sae_applies_to_raw_activations(tmp_path):
    """The scale is folded in: raw inputs give s × the training-unit codes and x̂."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2048, D, generator=gen) * 50 + 7
    cfg = TrainConfig(
        sae=SAEConfig(d_in=D, d_sae=S, sparsity="jumprelu"),
        steps=20,
        batch_size=256,
        warmup_steps=2,
        progress=False,
    )
    sae = train_sae(x, cfg, tmp_path)
    config = SAE.load(tmp_path)
    s = float(__import__("json").loads((tmp_path / "config.json").read_text())["norm_factor"])
    assert s == pytest.approx(float((x**2).sum(1).mean().sqrt()), rel=0.05)
    trained = SAE(sae.cfg)  # the training-unit SAE: divide the folded biases back
    trained.load_state_dict(sae.state_dict())
    trained.scale_biases_(1 / s)
    with torch.no_grad():
        assert torch.allclose(config.encode(x), s * trained.encode(x / s), rtol=1e-4, atol=1e-3)
        assert torch.allclose(config(x).x_hat, s * trained(x / s).x_hat, rtol=1e-4, atol=1e-3)
