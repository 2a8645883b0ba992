"""Losses and reconstruction metrics of an SAE: pure functions of a batch and its output.

Every function takes ``(x_BD, out, ...)`` with ``out`` the :class:`SAEOutput` of the batch.
Reconstruction losses are the squared error summed over features and averaged over
examples (as in dictionary_learning); metrics are reported per element (MSE), relative to
the batch variance (normalised MSE) and as the fraction of variance explained (R²).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vlmsae.core import dist
from vlmsae.sae.model import SAE, SAEOutput
from vlmsae.sae.scratch import scratch
from vlmsae.sae.sparse import ActiveLatents, decode_sparse, encode_at, jumprelu_l0
from vlmsae.train.config import TrainConfig


class LossOutput(NamedTuple):
    """The training loss and its parts (scalars, except ``group_losses``)."""

    total: Tensor
    """What is minimised: reconstruction + penalties (+ AuxK)."""
    recon: Tensor
    """Reconstruction loss: ``Σ_g w_g L_g / G`` over the G Matryoshka prefixes (``L`` for a
    plain SAE)."""
    group_losses: Tensor
    """[G] reconstruction loss of each nested prefix (G = 1 for a plain SAE)."""
    aux: Tensor
    """AuxK loss on dead latents (normalised by the residual's variance; 0 when none)."""
    sparsity: Tensor
    """L1 (``relu``) or L0 (``jumprelu``) penalty before its coefficient; 0 otherwise."""


class _SquaredErrorMeans(torch.autograd.Function):
    """``[G]``: ``(x - pred_g).pow(2).sum(-1).mean()`` for every ``g`` of ``pred_GBD``, a
    ``[B, D]`` slice at a time (autograd's version takes five ``[G, B, D]`` temporaries).

    ``reuse_buffers``: the differences and the gradient go into ``[G, B, D]`` buffers kept
    per thread (the next such call overwrites them: backward first), not fresh ones, whose
    page faults cost more than the arithmetic on a CPU. The values are the same bit for bit."""

    @staticmethod
    def forward(ctx, x_BD, pred_GBD, reuse_buffers=False):
        diff_GBD = _buffer("loss:diff", pred_GBD, reuse_buffers)
        for g, pred_BD in enumerate(pred_GBD):
            torch.sub(x_BD, pred_BD, out=diff_GBD[g])
        ctx.save_for_backward(diff_GBD)
        ctx.x_needs_grad = x_BD.requires_grad
        ctx.reuse_buffers = reuse_buffers
        return torch.stack([_row_squared_norms(d_BD).mean() for d_BD in diff_GBD])

    @staticmethod
    def backward(ctx, grad_G):
        (diff_GBD,) = ctx.saved_tensors
        coef_G = grad_G * (-2.0 / diff_GBD.shape[1])
        grad_pred_GBD = _buffer("loss:grad", diff_GBD, ctx.reuse_buffers)
        for g, d_BD in enumerate(diff_GBD):
            torch.mul(d_BD, coef_G[g], out=grad_pred_GBD[g])
        grad_x = -grad_pred_GBD.sum(0) if ctx.x_needs_grad else None
        return grad_x, grad_pred_GBD, None


def _buffer(name: str, like_GBD: Tensor, reuse: bool) -> Tensor:
    """A ``[G, B, D]`` tensor like ``like_GBD``: kept per thread and shape (``reuse``) or new."""
    if not reuse:
        return torch.empty_like(like_GBD)
    shape = tuple(like_GBD.shape)
    return scratch(f"{name}:{shape}", shape, like_GBD.dtype, like_GBD.device)


def _row_squared_norms(d_BD: Tensor, rows: int = 256) -> Tensor:
    """``d_BD.pow(2).sum(-1)`` (the same values) through cache-sized temporaries."""
    return torch.cat([d.pow(2).sum(-1) for d in d_BD.split(rows)])


def reconstruction_losses(x_BD: Tensor, out: SAEOutput, *, reuse_buffers: bool = False) -> Tensor:
    """``[G]``: mean over examples of ``‖x - x̂_g‖²`` for every nested prefix ``g``
    (``reuse_buffers``: see :class:`_SquaredErrorMeans`; the training step's)."""
    x_BD = x_BD.reshape(-1, x_BD.shape[-1]).float()
    if out.prefix_GBD is not None and x_BD.shape[0] > 0:
        prefix_GBD = out.prefix_GBD.reshape(-1, *x_BD.shape).float()
        return _SquaredErrorMeans.apply(x_BD, prefix_GBD, reuse_buffers)
    return torch.stack(
        [(x_BD - p.reshape(x_BD.shape)).pow(2).sum(-1).mean() for p in out.prefix_x_hats]
    )


def auxk_loss(sae: SAE, x_BD: Tensor, out: SAEOutput, dead_S: Tensor, k_aux: int) -> Tensor:
    """AuxK (Gao et al. 2024): reconstruct the residual ``x - x̂`` from the ``k_aux``
    largest dead latents, normalised by the residual's variance so that the loss is
    comparable across scales; 0 when no latent is dead."""
    dead_idx = dead_S.nonzero().squeeze(1)
    if dead_idx.numel() == 0:
        return x_BD.new_zeros(())
    x_BD = x_BD.reshape(-1, sae.cfg.d_in).float()
    k = min(k_aux, dead_idx.numel())
    pre_dead_BK = out.pre_acts.detach()[:, dead_idx]
    top_BK = pre_dead_BK.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    rows = torch.arange(x_BD.shape[0], device=x_BD.device).repeat_interleave(k)
    cols = dead_idx[top_BK.reshape(-1)]
    values = torch.relu(encode_at(out.pre_acts, x_BD, sae.W_enc, sae.b_enc, sae.b_dec, rows, cols))
    active = ActiveLatents(rows, cols, values, x_BD.shape[0], sae.cfg.d_sae)
    residual_BD = (x_BD - out.x_hat.reshape(x_BD.shape)).detach()
    err = (residual_BD - decode_sparse(active, sae.W_dec)).pow(2).sum(-1).mean()
    # the residual's variance over the global batch (all ranks' slices in a data-parallel run)
    denom = dist.mean((residual_BD - dist.mean(residual_BD)).pow(2).sum(-1))
    return (err / denom).nan_to_num(0.0)


def sparsity_penalty(sae: SAE, out: SAEOutput) -> Tensor:
    """L1 of codes weighted by decoder row norms (``relu``) or the L0 count (``jumprelu``)
    per example, averaged over examples; 0 for the k-sparse variants."""
    if sae.cfg.sparsity == "relu":
        codes_BS = out.codes.reshape(-1, sae.cfg.d_sae)
        return (codes_BS * sae.W_dec.norm(dim=1)).sum(-1).mean()
    if sae.cfg.sparsity == "jumprelu":
        step_BS = jumprelu_l0(out.pre_acts, sae.threshold, sae.cfg.jumprelu_bandwidth)
        return step_BS.sum(-1).mean()
    return out.x_hat.new_zeros(())


def sae_loss(
    sae: SAE,
    x_BD: Tensor,
    out: SAEOutput,
    dead_S: Tensor,
    cfg: TrainConfig,
    *,
    reuse_buffers: bool = False,
) -> LossOutput:
    """The training objective of ``cfg``: weighted prefix reconstruction + penalty + AuxK.

    ``dead_S`` is the dead set AuxK uses: the trainer updates the "examples since fired"
    counters with this batch first, so a latent that fires here is not dead (as in the
    paper's code). ``reuse_buffers``: the reconstruction losses keep their temporaries in
    buffers that the next such call overwrites (run the backward first; training does)."""
    group_losses = reconstruction_losses(x_BD, out, reuse_buffers=reuse_buffers)
    n_groups = sae.cfg.n_groups
    weights = sae.cfg.group_weights or (1.0 / n_groups,) * n_groups
    w_G = torch.tensor(weights, device=group_losses.device)
    # the paper's code weighs each prefix by w_g = 1/G and then averages over the G prefixes,
    # Σ_g L_g / G²: AuxK weighs G times more against reconstruction than under a plain mean
    recon = (w_G * group_losses).sum() / n_groups
    sparsity = sparsity_penalty(sae, out)
    coeff = {"relu": cfg.l1_coeff, "jumprelu": cfg.l0_coeff}.get(sae.cfg.sparsity, 0.0)
    aux = recon.new_zeros(())
    if sae.cfg.sparsity in ("topk", "batchtopk") and cfg.aux_alpha > 0:
        aux = auxk_loss(sae, x_BD, out, dead_S, cfg.k_aux)
    total = recon + coeff * sparsity + cfg.aux_alpha * aux
    return LossOutput(total, recon, group_losses, aux, sparsity)


# -- metrics (no gradient) ------------------------------------------------------------
TOP_ROWS = 0.01
"""The share of rows (by variance) whose share of the variance :func:`dominance_warning`
watches."""
DOMINANT_SHARE = 0.5


def dominance_warning(metrics: dict[str, Any]) -> str | None:
    """A warning when the top :data:`TOP_ROWS` of rows hold over :data:`DOMINANT_SHARE` of
    the variance (R² then describes those rows only), else None."""
    share = metrics.get("top_rows_var_share")
    if share is None or share <= DOMINANT_SHARE:
        return None
    return (
        f"a few rows dominate the variance: the top {TOP_ROWS:.0%} of rows hold "
        f"{share:.1%} of it, so R² ({metrics.get('r2', float('nan')):.4g}) describes those "
        f"rows; the median per-row R² is {metrics.get('row_r2_median', float('nan')):.4g} "
        "(look for outlier rows in the activations, or normalise them)"
    )


@torch.no_grad()
def variance_metrics(
    x_BD: Tensor, x_hat_BD: Tensor, prefix_x_hats: tuple[Tensor, ...] = ()
) -> dict[str, Any]:
    """MSE (per element), normalised MSE (error / variance of ``x`` around its mean), R²
    (``1 - nmse``, the fraction of variance explained), the median over rows of each row's
    R² (``row_r2_median``: its error over its squared distance to the coordinate-wise median
    row), the share of those squared distances held by the top 1 % of rows
    (``top_rows_var_share``) and, given more than one Matryoshka prefix, the normalised
    MSE of every prefix."""
    x_BD = x_BD.reshape(-1, x_BD.shape[-1]).float()
    row_err_B = (x_BD - x_hat_BD.reshape(x_BD.shape)).pow(2).sum(1)
    var, sq_err = (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12), row_err_B.sum()
    nmse = float(sq_err / var)
    metrics: dict[str, Any] = {"mse": float(sq_err / x_BD.numel()), "nmse": nmse, "r2": 1 - nmse}
    # R² pools the rows: a few rows of huge norm can hold it all (see dominance_warning).
    # Per row, the spread around the coordinate-wise median (a mean follows the huge rows).
    row_var_B = (x_BD - x_BD.median(0).values).pow(2).sum(1)
    metrics["row_r2_median"] = float((1 - row_err_B / row_var_B.clamp_min(1e-12)).median())
    n_top = max(1, math.ceil(TOP_ROWS * len(row_var_B)))
    share = row_var_B.topk(n_top).values.sum() / row_var_B.sum().clamp_min(1e-12)
    metrics["top_rows_var_share"] = float(share)
    if len(prefix_x_hats) > 1:
        metrics["group_nmse"] = [
            float((x_BD - p.reshape(x_BD.shape)).pow(2).sum() / var) for p in prefix_x_hats
        ]
    return metrics


@torch.no_grad()
def reconstruction_metrics(x_BD: Tensor, out: SAEOutput) -> dict[str, Any]:
    """:func:`variance_metrics` of a forward output plus L0 (active latents per example)."""
    n = x_BD.reshape(-1, x_BD.shape[-1]).shape[0]
    metrics = variance_metrics(x_BD, out.x_hat, out.prefix_x_hats)
    if out.codes is not None:
        metrics["l0"] = float((out.codes != 0).sum() / n)
    else:
        metrics["l0"] = float((out.active.values != 0).sum() / n)
    return metrics


@torch.no_grad()
def global_reconstruction_metrics(x_BD: Tensor, out: SAEOutput) -> dict[str, Any]:
    """:func:`reconstruction_metrics` over the global batch of a data-parallel step: every
    rank calls it with its slice and gets the metrics of the whole batch."""
    x_BD = x_BD.reshape(-1, x_BD.shape[-1]).float()
    centred_BD = x_BD - dist.mean(x_BD)
    prefixes = out.prefix_x_hats if len(out.prefix_x_hats) > 1 else ()
    active = out.codes if out.codes is not None else out.active.values
    sums = torch.stack(
        [
            centred_BD.pow(2).sum(),
            (x_BD - out.x_hat.reshape(x_BD.shape)).pow(2).sum(),
            (active != 0).sum().float(),
            x_BD.new_tensor(float(x_BD.shape[0])),
            *[(x_BD - p.reshape(x_BD.shape)).pow(2).sum() for p in prefixes],
        ]
    )
    var, sq_err, nonzero, n, *group_err = dist.all_reduce(sums).tolist()
    var = max(var, 1e-12)
    metrics: dict[str, Any] = {
        "mse": sq_err / (n * x_BD.shape[1]),
        "nmse": sq_err / var,
        "r2": 1 - sq_err / var,
    }
    if prefixes:
        metrics["group_nmse"] = [e / var for e in group_err]
    metrics["l0"] = nonzero / n
    return metrics


class BatchFigures(NamedTuple):
    """A training step's loss parts and its batch's reconstruction metrics, of the global
    batch."""

    recon: float
    aux: float
    group_losses: list[float]
    metrics: dict[str, Any]
    """:func:`reconstruction_metrics` of the batch."""


@torch.no_grad()
def batch_figures(x_BD: Tensor, loss: LossOutput, out: SAEOutput) -> BatchFigures:
    """The figures of a step's log point; data parallel, of the global batch (the ranks'
    shares summed), not of this rank's slice."""
    recon, aux, groups = loss.recon.detach(), loss.aux.detach(), loss.group_losses.detach()
    if dist.is_distributed():
        share = dist.batch_share(x_BD.shape[0])[0]
        summed = dist.all_reduce(torch.cat([recon[None], aux[None], groups]).float() * share)
        recon, aux, groups = summed[0], summed[1], summed[2:]
        metrics = global_reconstruction_metrics(x_BD, out)
    else:
        metrics = reconstruction_metrics(x_BD, out)
    return BatchFigures(float(recon), float(aux), [float(v) for v in groups], metrics)
