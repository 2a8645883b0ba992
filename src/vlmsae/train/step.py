"""One optimizer step of SAE training, and what it starts from (the optimizer, ``b_dec``).

:func:`train_step` is the loop body of :class:`~vlmsae.train.run.Run`, in the order that
keeps the decoder on the unit sphere: forward → loss → backward → remove decoder-parallel
gradient → clip → step → renormalise → schedule. Its dependencies are passed in, so a test
or a benchmark drives it without a run around it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlmsae.core import dist
from vlmsae.core.errors import NonFiniteError
from vlmsae.sae.model import SAE, SAEOutput
from vlmsae.train.config import TrainConfig, lr_factor
from vlmsae.train.losses import LossOutput, sae_loss
from vlmsae.train.optim import LayoutAdam
from vlmsae.train.state import TrainState


def train_step(
    sae: SAE, optimizer: torch.optim.Optimizer, x_BD: Tensor, state: TrainState, cfg: TrainConfig
) -> tuple[LossOutput, SAEOutput]:
    """One optimizer step, in the order that keeps the decoder on the unit sphere.

    Data parallel (several ranks, see :mod:`vlmsae.core.dist`): ``x_BD`` is this rank's slice of
    the global batch; selection, dead counters, AuxK's variance and the threshold are taken
    over the global batch, and the summed gradients equal one process's. The returned
    ``loss.total`` is the global loss."""
    share, n_global = dist.batch_share(x_BD.shape[0])  # (1.0, B) in one process
    with torch.autocast(x_BD.device.type, torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
        out = sae(x_BD, return_codes=False, reuse_buffers=True)  # forward (k·B over the batch)
        _record_firing(sae, out, state, n_global)  # first: a latent firing here is not dead
        dead_S = state.examples_since_fired_S >= cfg.dead_after
        loss = sae_loss(sae, x_BD, out, dead_S, cfg, reuse_buffers=True)  # loss
    total = loss.total if share == 1.0 else loss.total * share  # this rank's part of the mean
    global_total = dist.all_reduce(total.detach().clone())  # every rank sees the same loss
    if not torch.isfinite(global_total):
        raise NonFiniteError(f"the loss is {float(global_total)}")
    sae.recycle_grads_()  # zero_grad; the backward writes into last step's weight gradients
    optimizer.zero_grad(set_to_none=True)
    total.backward()  # backward
    dist.all_reduce_tensors(p.grad for p in sae.parameters() if p.grad is not None)
    sae.remove_parallel_grad_()  # remove decoder-parallel gradient
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)  # clip
    optimizer.step()  # step
    sae.normalize_decoder_()  # renormalise decoder
    for group in optimizer.param_groups:  # schedule: the lr of the next step
        group["lr"] = cfg.learning_rate * lr_factor(state.step + 1, cfg)
    _update_threshold(sae, out, state, cfg)
    state.step += 1
    return loss._replace(total=global_total), out


@torch.no_grad()
def _record_firing(sae: SAE, out: SAEOutput, state: TrainState, n_global: int) -> None:
    """Dead-latent counters: examples (of the global batch) since each latent last had a
    positive code."""
    n = out.pre_acts.shape[0]
    if out.active is not None:
        fired_S = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=out.pre_acts.device)
        fired_S[out.active.cols[out.active.values > 0]] = True
    else:
        fired_S = (out.codes.reshape(n, -1) != 0).any(0)
    if dist.is_distributed():  # fired on any rank
        fired_S = dist.all_reduce(fired_S.to(torch.int32), "max").bool()
    state.examples_since_fired_S += n_global
    state.examples_since_fired_S[fired_S] = 0


@torch.no_grad()
def _update_threshold(sae: SAE, out: SAEOutput, state: TrainState, cfg: TrainConfig) -> None:
    """The BatchTopK inference threshold: an EMA of the smallest code kept in the batch, so
    that thresholding at inference keeps ~k per example; updated at the steps after
    ``threshold_start_step`` (0-based ``state.step`` is this step's index)."""
    if sae.cfg.sparsity == "batchtopk" and state.step > cfg.threshold_start_step:
        values = out.active.values
        positive = values[values > 0]
        inf = values.new_tensor(math.inf, dtype=torch.float32)
        smallest = dist.all_reduce(positive.min().float() if positive.numel() else inf, "min")
        if torch.isfinite(smallest):  # the smallest kept code of the global batch
            if sae.threshold < 0:  # first update: no EMA history yet
                sae.threshold.copy_(smallest)
            else:
                sae.threshold.mul_(cfg.threshold_beta).add_((1 - cfg.threshold_beta) * smallest)


def make_optimizer(sae: SAE, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam at the lr of step 0; the fused kernel (one pass per tensor) where available,
    walking the transposed ``W_enc`` in its memory order (:class:`LayoutAdam`)."""
    lr = cfg.learning_rate * lr_factor(0, cfg)
    try:
        return LayoutAdam(sae.parameters(), lr=lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return LayoutAdam(sae.parameters(), lr=lr, betas=cfg.adam_betas)


def init_b_dec(sae: SAE, x_BD: Tensor) -> None:
    """``b_dec`` at the geometric median of the first batch (the global batch: every rank's
    slice, in rank order)."""
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(dist.all_gather_rows(x_BD).float()))


@torch.no_grad()
def geometric_median(points_ND: Tensor, n_iter: int = 100, tol: float = 1e-5) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to ``points_ND``."""
    guess_D = points_ND.mean(0)
    for _ in range(n_iter):
        prev_D = guess_D
        weights_N = 1.0 / (points_ND - guess_D).norm(dim=1).clamp_min(1e-8)
        guess_D = (weights_N[:, None] * points_ND).sum(0) / weights_N.sum()
        if (guess_D - prev_D).norm() < tol * (1.0 + prev_D.norm()):
            break
    return guess_D
