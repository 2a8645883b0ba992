"""Reconstruction and sparsity metrics as pure functions (numpy arrays or torch tensors).

``r2`` is the fraction of variance explained, ``1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`` (x̄: the mean
row); ``normalized_mse`` is ``Σ‖x − x̂‖² / Σ‖x‖²``. ``ReconAccumulator`` computes both in
one streaming pass (float64 sums) for data that does not fit in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from vlmsae.core import dist


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float64)


class ReconAccumulator:
    """Streaming R², normalised MSE and MSE over batches of ``(x [B, D], x_hat [B, D])``."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0
        self.sum_sq = 0.0
        self.sum_D: np.ndarray | None = None

    def add(self, x_BD: Any, x_hat_BD: Any) -> None:
        x, x_hat = _np(x_BD), _np(x_hat_BD)
        if x.shape != x_hat.shape:
            raise ValueError(f"x has shape {x.shape} but x_hat has shape {x_hat.shape}")
        self.n += x.shape[0]
        self.sse += float(((x - x_hat) ** 2).sum())
        self.sum_sq += float((x * x).sum())
        s = x.sum(axis=0)
        self.sum_D = s if self.sum_D is None else self.sum_D + s

    def merge_ranks(self, d: int) -> None:
        """Sum the accumulators of every rank into each (under ``torchrun``: each rank added
        its share of the rows; a no-op in one process). ``d``: the row width, for a rank
        that added no rows."""
        if not dist.is_distributed():
            return
        sum_D = self.sum_D if self.sum_D is not None else np.zeros(d)
        packed = np.concatenate([[self.n, self.sse, self.sum_sq], sum_D]).astype(np.float64)
        dist.all_reduce_array(packed)
        self.n, self.sse, self.sum_sq = int(packed[0]), float(packed[1]), float(packed[2])
        self.sum_D = packed[3:]

    def result(self) -> dict[str, float]:
        if self.n == 0 or self.sum_D is None:
            raise ValueError("no rows were added")
        total_var = self.sum_sq - float(self.sum_D @ self.sum_D) / self.n
        return {
            "r2": 1.0 - self.sse / total_var if total_var > 0 else float("nan"),
            "normalized_mse": self.sse / self.sum_sq if self.sum_sq > 0 else float("nan"),
            "mse": self.sse / (self.n * len(self.sum_D)),
            "n_rows": self.n,
        }


def r2(x_ND: Any, x_hat_ND: Any) -> float:
    """Fraction of variance explained."""
    acc = ReconAccumulator()
    acc.add(x_ND, x_hat_ND)
    return acc.result()["r2"]


def normalized_mse(x_ND: Any, x_hat_ND: Any) -> float:
    acc = ReconAccumulator()
    acc.add(x_ND, x_hat_ND)
    return acc.result()["normalized_mse"]


def l0(codes_NS: Any) -> float:
    """Mean number of non-zero codes per row."""
    if sp.issparse(codes_NS):
        c = sp.csr_matrix(codes_NS)
        return float((c.data != 0).sum() / max(c.shape[0], 1))
    c = _np(codes_NS)
    return float((c != 0).sum() / max(c.shape[0], 1))


def dead_fraction(codes_NS: Any) -> float:
    """Share of latents that are zero on every row."""
    if sp.issparse(codes_NS):
        c = sp.csr_matrix(codes_NS)
        fired = np.zeros(c.shape[1], bool)
        fired[c.indices[c.data != 0]] = True
        return float(1.0 - fired.mean())
    c = _np(codes_NS)
    return float(1.0 - (c != 0).any(axis=0).mean())
