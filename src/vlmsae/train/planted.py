"""The planted-dictionary problem: data built from known directions, to check an SAE.

``x = Σ_j c_j · f_j + noise`` with ``f_j`` unit ground-truth directions in ``d`` dimensions
and, per example, ``n_active`` nonnegative coefficients ``c_j``. A good SAE learns decoder
rows that point along the ``f_j``; :func:`dictionary_recovery` measures how many it found.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PlantedData(NamedTuple):
    x: Tensor
    """[N, D] examples."""
    dictionary: Tensor
    """[F, D] ground-truth unit directions."""
    coefficients: Tensor
    """[N, F] the sparse nonnegative coefficients of each example."""


def make_planted(
    n: int,
    d: int = 64,
    n_features: int = 256,
    n_active: int = 5,
    noise: float = 0.01,
    seed: int = 0,
) -> PlantedData:
    """``n`` examples, each a nonnegative mix of ``n_active`` of ``n_features`` random unit
    directions (coefficients uniform in [0.5, 1.5]) plus Gaussian noise of std ``noise``."""
    if not 0 < n_active <= n_features:
        raise ValueError(f"n_active must be in [1, n_features={n_features}], got {n_active}")
    gen = torch.Generator().manual_seed(seed)
    dictionary_FD = torch.randn(n_features, d, generator=gen)
    dictionary_FD /= dictionary_FD.norm(dim=1, keepdim=True)
    chosen_NK = torch.rand(n, n_features, generator=gen).argsort(dim=1)[:, :n_active]
    values_NK = 0.5 + torch.rand(n, n_active, generator=gen)
    coeffs_NF = torch.zeros(n, n_features).scatter_(1, chosen_NK, values_NK)
    x_ND = coeffs_NF @ dictionary_FD + noise * torch.randn(n, d, generator=gen)
    return PlantedData(x_ND, dictionary_FD, coeffs_NF)


class Recovery(NamedTuple):
    fraction: float
    """Fraction of true directions matched by some decoder row at cosine > threshold."""
    best_cosine: Tensor
    """[F] best cosine similarity of each true direction with any decoder row."""


@torch.no_grad()
def dictionary_recovery(
    W_dec_SD: Tensor, dictionary_FD: Tensor, threshold: float = 0.9
) -> Recovery:  # noqa: N803
    """How many ground-truth directions have a decoder row at cosine > ``threshold``."""
    dec = W_dec_SD / W_dec_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    true = dictionary_FD / dictionary_FD.norm(dim=1, keepdim=True)
    best_F = (true @ dec.t()).max(dim=1).values
    return Recovery(float((best_F > threshold).float().mean()), best_F)
