"""Sparse kernels of the TopK / BatchTopK SAE: only the encoder product is dense.

A training step of a k-sparse SAE needs one dense product, ``pre_BS = x_BD @ W_enc_DS``
(B × D × S). Everything that touches the codes only involves the k active latents of
each row, so decoding and the gradients of ``W_enc``, ``b_enc`` and ``W_dec`` are
computed from the list of active entries (``ActiveLatents``) with sparse-dense products
(O(B·k·D)) instead of three more dense B × D × S products.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_CHUNK = 1 << 14  # entries per chunk in gathered row products (bounds temporary memory)


class ActiveLatents(NamedTuple):
    """The nonzero codes of a batch in coordinate form, sorted by row then latent."""

    rows: Tensor
    """int64 [N]: example (row) of each active entry."""
    cols: Tensor
    """int64 [N]: latent of each active entry."""
    values: Tensor
    """float [N]: code value of each active entry (differentiable in training)."""
    n_rows: int
    """Rows of the batch (B)."""
    n_latents: int
    """Latents of the SAE (S)."""

    def to_dense(self) -> Tensor:
        """Dense codes ``[B, S]`` (differentiable with respect to ``values``)."""
        out = self.values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put((self.rows, self.cols), self.values)

    def select_latents(self, lo: int, hi: int) -> ActiveLatents:
        """The entries whose latent lies in ``[lo, hi)`` (a Matryoshka group)."""
        keep = (self.cols >= lo) & (self.cols < hi)
        return self._replace(rows=self.rows[keep], cols=self.cols[keep], values=self.values[keep])


# -- selection (no gradient: these only decide *which* entries are active) -------------
def select_topk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Rows and latents of the k largest ReLU'd pre-activations of every row."""
    b, _ = pre_BS.shape
    idx_BK = pre_BS.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    rows = torch.arange(b, device=pre_BS.device).repeat_interleave(k)
    return rows, idx_BK.reshape(-1)


def select_batchtopk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Rows and latents of the ``k * B`` largest pre-activations over the whole batch."""
    b, s = pre_BS.shape
    flat = pre_BS.reshape(-1).topk(min(k * b, b * s), sorted=False).indices.sort().values
    return flat // s, flat % s


def select_threshold(pre_BS: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and latents whose pre-activation exceeds ``threshold`` (scalar or [S]) and 0."""
    mask = (pre_BS > threshold) & (pre_BS > 0)
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


# -- differentiable sparse products ---------------------------------------------------
def _coo(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)


def _gathered_dot(a_BD: Tensor, b_SD: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``(a_BD[rows] * b_SD[cols]).sum(-1)`` in chunks, never materialising N × D at once."""
    out = a_BD.new_empty(rows.shape[0])
    for lo in range(0, rows.shape[0], _CHUNK):
        hi = lo + _CHUNK
        out[lo:hi] = (a_BD[rows[lo:hi]] * b_SD[cols[lo:hi]]).sum(-1)
    return out


class _EncodeAt(torch.autograd.Function):
    """Values of ``pre = x @ W_enc + bias`` at the active entries, with sparse gradients.

    ``pre_BS`` (computed without gradient) supplies the forward values; the backward pass
    only scatters the N active entries: grad ``W_enc = xᵀ G`` with ``G`` sparse.
    """

    @staticmethod
    def forward(ctx, pre_BS, x_BD, W_enc_DS, bias_S, rows, cols):  # noqa: N803
        ctx.save_for_backward(x_BD, W_enc_DS, rows, cols)
        return pre_BS[rows, cols].float()

    @staticmethod
    def backward(ctx, grad_N):
        x_BD, W_enc_DS, rows, cols = ctx.saved_tensors
        d, s = W_enc_DS.shape
        grad_N = grad_N.to(W_enc_DS.dtype)
        grad_x = grad_W = grad_bias = None
        if ctx.needs_input_grad[1]:  # only when someone differentiates w.r.t. the input
            grad_x = torch.sparse.mm(_coo(rows, cols, grad_N, (x_BD.shape[0], s)), W_enc_DS.t())
        if ctx.needs_input_grad[2]:
            g_SB = _coo(cols, rows, grad_N, (s, x_BD.shape[0]))
            grad_W = torch.sparse.mm(g_SB, x_BD.to(grad_N.dtype)).t()
        if ctx.needs_input_grad[3]:
            grad_bias = grad_N.new_zeros(s).index_add_(0, cols, grad_N)
        return None, grad_x, grad_W, grad_bias, None, None


class _DecodeSparse(torch.autograd.Function):
    """``codes @ W_dec`` for codes given as active entries; O(N · D) both ways."""

    @staticmethod
    def forward(ctx, values, rows, cols, W_dec_SD, n_rows):  # noqa: N803
        ctx.save_for_backward(values, rows, cols, W_dec_SD)
        s = W_dec_SD.shape[0]
        return torch.sparse.mm(_coo(rows, cols, values.to(W_dec_SD.dtype), (n_rows, s)), W_dec_SD)

    @staticmethod
    def backward(ctx, grad_BD):
        values, rows, cols, W_dec_SD = ctx.saved_tensors
        grad_BD = grad_BD.to(W_dec_SD.dtype).contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _gathered_dot(grad_BD, W_dec_SD, rows, cols).to(values.dtype)
        if ctx.needs_input_grad[3]:
            a_SB = _coo(cols, rows, values.to(grad_BD.dtype), (W_dec_SD.shape[0], grad_BD.shape[0]))
            grad_W = torch.sparse.mm(a_SB, grad_BD)
        return grad_values, None, None, grad_W, None


def encode_at(
    pre_BS: Tensor, x_BD: Tensor, W_enc_DS: Tensor, bias_S: Tensor, rows: Tensor, cols: Tensor
) -> Tensor:
    """Differentiable ``(x @ W_enc + bias)[rows, cols]`` given precomputed ``pre_BS``."""
    return _EncodeAt.apply(pre_BS.detach(), x_BD, W_enc_DS, bias_S, rows, cols)


def decode_sparse(active: ActiveLatents, W_dec_SD: Tensor) -> Tensor:
    """Differentiable ``active.to_dense() @ W_dec`` without the dense product."""
    return _DecodeSparse.apply(active.values, active.rows, active.cols, W_dec_SD, active.n_rows)
