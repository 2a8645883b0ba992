"""MS and top images on 2 gloo processes equal one process (every rank gets the result).

Each rank streams its share of the rows (whole images: a share never splits an image's
tokens); MS sums are all-reduced, top-k lists merged in image order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ranks import run_ranks
from vlmsae import dist
from vlmsae.metrics.ms import monosemanticity
from vlmsae.metrics.top_images import top_images


def _data():
    rng = np.random.default_rng(0)
    n, k = 301, 40
    dense_NK = rng.normal(size=(n, k))
    codes = sp.random(n, k, density=0.1, random_state=1, format="lil") * 3
    codes[:, 7] = 0  # a dead neuron: MS undefined on every rank
    emb_NE = rng.normal(size=(n, 6))
    tokens_R = np.repeat(np.arange(n // 3 + 1), 3)[:n]  # 3 rows per image
    ties = np.round(dense_NK, 0)  # many equal values: the merge must break ties as one process
    return dense_NK, sp.csr_matrix(codes), emb_NE, tokens_R, ties


def _metrics(out: str | None) -> dict[str, np.ndarray]:
    dense_NK, codes, emb_NE, tokens_R, ties = _data()
    res = {
        "ms_dense": monosemanticity(dense_NK, emb_NE, chunk_rows=50).ms,
        "ms_sparse": monosemanticity(codes, emb_NE, chunk_rows=64).ms,
        "n_active": monosemanticity(codes, emb_NE).n_active,
    }
    for name, acts, index in (("plain", ties, None), ("tokens", codes, tokens_R)):
        top = top_images(acts, 5, image_index=index, chunk_rows=40)
        res[f"top_{name}_idx"], res[f"top_{name}_val"] = top.indices, top.values
    if out is not None:
        np.savez(Path(out) / f"rank{dist.rank()}.npz", **res)
    return res


def test_two_rank_metrics_equal_one_process(tmp_path):
    run_ranks(_metrics, 2, str(tmp_path))
    one = _metrics(None)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for name, want in one.items():
            if name.startswith("ms"):
                np.testing.assert_allclose(got[name], want, rtol=1e-9, atol=1e-12)
            else:
                np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert np.isnan(one["ms_sparse"][7])
