"""k-sparse probing: how well k latents chosen for a concept predict it on held-out images.

For each concept, the latents (or raw neurons) are ranked on a train split by the absolute
difference of their mean activation on images with and without the concept; a logistic
regression on the top ``k`` of them (k = 1, 2, 5, 20) is fitted on the train split and
scored on a held-out split. The same is done for every representation compared (the SAE,
the raw neurons of its hook point, an untrained SAE of the same shape).

The regressions of a block of concepts are fitted together by Newton's method (IRLS) on
standardised features with an L2 penalty on the weights (not the intercept) and class
weights that balance present and absent images: the objective of scikit-learn's
``LogisticRegression(C=1 / (n_train · l2), class_weight="balanced")``, which the tests check
it against. Accuracy is reported as is and balanced (the mean of the accuracies on present
and absent images, which a constant guess holds at 0.5 whatever the concept's frequency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.core.progress import progress
from vlmsae.evaluate.concepts import _as_labels
from vlmsae.evaluate.config import ProbingConfig

if TYPE_CHECKING:
    import torch


class ProbingResult(NamedTuple):
    """Held-out accuracy of the k-sparse probe of every concept."""

    k_values: tuple[int, ...]
    accuracy: np.ndarray
    """``float64 [C, K]`` held-out accuracy (NaN where the concept has no present or no
    absent image in the train or the test split)."""
    balanced_accuracy: np.ndarray
    """``float64 [C, K]`` mean of the held-out accuracies on present and absent images."""
    latents: np.ndarray
    """``int64 [C, max k]`` the chosen latents, best first (-1 where there are fewer)."""
    n_train: int
    n_test: int

    def summary(self) -> dict[str, Any]:
        """Mean (balanced) accuracy per k over the concepts where it is defined."""
        out: dict[str, Any] = {"n_train": self.n_train, "n_test": self.n_test}
        for j, k in enumerate(self.k_values):
            acc, bal = self.accuracy[:, j], self.balanced_accuracy[:, j]
            ok = np.isfinite(acc)
            out[str(k)] = {
                "mean_accuracy": float(acc[ok].mean()) if ok.any() else float("nan"),
                "mean_balanced_accuracy": float(bal[ok].mean()) if ok.any() else float("nan"),
                "n_concepts": int(ok.sum()),
            }
        return out


def train_test_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test image indices: a seeded random ``test_fraction`` held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def rank_by_mean_difference(x_NS: Any, y_NC: sp.csr_matrix, k: int, block: int = 64) -> np.ndarray:
    """``int64 [C, k]`` the ``k`` columns of ``x_NS`` (dense or CSR) with the largest
    ``|mean on present − mean on absent|`` per concept (ties: lowest column), best first."""
    n, s = x_NS.shape
    k = min(k, s)
    total_S = np.asarray(x_NS.sum(axis=0), np.float64).ravel()
    p_C = np.bincount(y_NC.indices, minlength=y_NC.shape[1]).astype(np.float64)
    y_CN = y_NC.T.tocsr().astype(np.float64)
    out = np.empty((y_NC.shape[1], k), np.int64)
    for lo in range(0, y_NC.shape[1], block):
        sums = y_CN[lo : lo + block] @ x_NS
        pos_BS = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
        p = p_C[lo : lo + block, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.nan_to_num(pos_BS / p - (total_S - pos_BS) / (n - p))
        for i, row in enumerate(-np.abs(diff)):
            out[lo + i] = _smallest(row, k)
    return out


def _smallest(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest values of ``row``, ascending, ties by lowest index."""
    kth = np.partition(row, k - 1)[k - 1]
    below = np.flatnonzero(row < kth)
    pick = np.concatenate([below, np.flatnonzero(row == kth)[: k - len(below)]])
    return pick[np.lexsort((pick, row[pick]))]


def _columns(x_NS: Any, cols: np.ndarray) -> np.ndarray:
    """Dense ``[N, len(cols)]`` of the given columns (``x_NS``: dense or CSC)."""
    part = x_NS[:, cols]
    return part.toarray() if sp.issparse(part) else np.asarray(part)


def fit_logistic(
    x_BNK: torch.Tensor, y_BN: torch.Tensor, l2: float, max_iter: int = 50
) -> torch.Tensor:
    """Weights ``[B, K + 1]`` (intercept last) of ``B`` class-balanced L2 logistic
    regressions on standardised ``x_BNK``, fitted together by Newton's method.

    Minimises ``(1/N) Σ_n w_n log(1 + exp(−ŷ_n z_n)) + (l2/2) ‖β‖²`` per problem, with
    ``w_n = N / (2 · count of y_n's class)``; the intercept is not penalised."""
    import torch

    b, n, k = x_BNK.shape
    x = torch.cat([x_BNK, torch.ones(b, n, 1, dtype=x_BNK.dtype)], dim=2)
    n_pos = y_BN.sum(1, keepdim=True)
    sw_BN = torch.where(y_BN > 0, n / (2 * n_pos.clamp(min=1)), n / (2 * (n - n_pos).clamp(min=1)))
    penalty = torch.full((k + 1,), l2, dtype=x.dtype)
    penalty[-1] = 1e-12  # the intercept is free; a tiny ridge keeps H invertible
    w = torch.zeros(b, k + 1, dtype=x.dtype)
    xt = x.transpose(1, 2)  # [B, K + 1, N]
    for _ in range(max_iter):
        p_BN = torch.sigmoid(torch.bmm(x, w.unsqueeze(2)).squeeze(2))
        grad = torch.bmm(xt, (sw_BN * (p_BN - y_BN)).unsqueeze(2)).squeeze(2) / n + penalty * w
        h = torch.bmm(xt * (sw_BN * p_BN * (1 - p_BN)).unsqueeze(1), x) / n
        step = torch.linalg.solve(h + torch.diag(penalty), grad)
        w = w - step
        if float(step.abs().max()) < 1e-9:
            break
    return w


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[B, K, N]`` scaled to mean 0, std 1 over the training images."""
    mean, std = train.mean(2, keepdims=True), train.std(2, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _scores(pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and balanced accuracy of ``pred`` vs ``y`` (both ``[B, N]`` bool) per row."""
    acc = (pred == y).mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = (pred & y).sum(1) / y.sum(1)
        tnr = (~pred & ~y).sum(1) / (~y).sum(1)
    return acc, (tpr + tnr) / 2


def sparse_probing(x_NS: Any, labels: Any, cfg: ProbingConfig = ProbingConfig()) -> ProbingResult:
    """Held-out accuracy of a logistic regression on the top-k latents of each concept.

    Args:
        x_NS: ``[N, S]`` one row per image (CSR or dense), e.g. SAE codes or raw neurons.
        labels: ``[N, C]`` concept presence.
        cfg: the ks, the split, the penalty.
    """
    import torch

    y_NC = _as_labels(labels)
    n, n_concepts = y_NC.shape
    train, test = train_test_split(n, cfg.test_fraction, cfg.seed)
    x = sp.csr_matrix(x_NS, dtype=np.float32) if sp.issparse(x_NS) else np.asarray(x_NS, np.float32)
    x_tr, x_te = x[train], x[test]
    if sp.issparse(x):
        x_tr, x_te = x_tr.tocsc(), x_te.tocsc()
    y_tr, y_te = y_NC[train], y_NC[test]
    k_max = min(max(cfg.k_values), x.shape[1])
    latents = rank_by_mean_difference(x_tr, y_tr, k_max)
    ks = tuple(cfg.k_values)
    acc = np.full((n_concepts, len(ks)), np.nan)
    bal = np.full((n_concepts, len(ks)), np.nan)
    ytr_CN = y_tr.T.toarray().astype(bool)
    yte_CN = y_te.T.toarray().astype(bool)
    defined = np.array([(0 < r.sum() < len(r)) for r in ytr_CN]) & np.array(
        [(0 < r.sum() < len(r)) for r in yte_CN]
    )
    concepts = np.flatnonzero(defined)
    bar = progress(total=len(concepts), desc="probe", unit="concept")
    for lo in range(0, len(concepts), cfg.concepts_per_block):
        block = concepts[lo : lo + cfg.concepts_per_block]
        f_tr = np.stack([_columns(x_tr, latents[c]).T for c in block])  # [B, k_max, N]
        f_te = np.stack([_columns(x_te, latents[c]).T for c in block])
        f_tr, f_te = _standardise(f_tr.astype(np.float64), f_te.astype(np.float64))
        for j, k in enumerate(ks):
            k = min(k, k_max)
            xt = torch.from_numpy(np.ascontiguousarray(f_tr[:, :k].transpose(0, 2, 1)))
            w = fit_logistic(xt, torch.from_numpy(ytr_CN[block].astype(np.float64)), cfg.l2,
                             cfg.max_iter).numpy()  # fmt: skip
            z = np.einsum("bkn,bk->bn", f_te[:, :k], w[:, :k]) + w[:, -1:]
            acc[block, j], bal[block, j] = _scores(z > 0, yte_CN[block])
        bar.update(len(block))
    bar.close()
    return ProbingResult(ks, acc, bal, latents, len(train), len(test))
