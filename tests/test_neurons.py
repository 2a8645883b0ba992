"""Top images, uniqueness, hierarchy, agreement, reconstruction metrics and tables."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.sparse as sp

from vlmsae.metrics.agreement import agreement, agreement_markdown, read_pairs
from vlmsae.metrics.hierarchy import (
    encode_taxonomy,
    hierarchy,
    inat_label_path,
    label_paths_from_images,
)
from vlmsae.metrics.recon import ReconAccumulator, dead_fraction, l0, r2
from vlmsae.metrics.tables import ms_table, tradeoff_table
from vlmsae.metrics.top_images import top_images
from vlmsae.metrics.uniqueness import uniqueness


def reference_top(dense_NK: np.ndarray, k: int) -> np.ndarray:
    return np.sort(dense_NK, axis=0)[::-1][:k].T


@pytest.mark.parametrize("chunk", [3, 1000])
def test_top_images_sparse_and_dense_match_sort(chunk):
    rng = np.random.default_rng(0)
    dense = rng.random((200, 30)) * (rng.random((200, 30)) < 0.1)
    for acts in (sp.csr_matrix(dense), dense):
        top = top_images(acts, k=5, chunk_rows=chunk)
        np.testing.assert_allclose(top.values, reference_top(dense, 5), rtol=1e-6)
        got = np.take_along_axis(dense, np.maximum(top.indices, 0).T, axis=0).T
        valid = top.indices >= 0
        np.testing.assert_allclose(got[valid], top.values[valid], rtol=1e-6)
    sparse_top = top_images(sp.csr_matrix(dense), k=5, chunk_rows=chunk)
    n_active = (dense > 0).sum(0)
    np.testing.assert_array_equal((sparse_top.indices >= 0).sum(1), np.minimum(n_active, 5))
    np.testing.assert_array_equal(sparse_top.kth_value == 0, n_active < 5)


@pytest.mark.parametrize("how", ["max", "mean"])
def test_top_images_aggregate_tokens_per_image(how):
    rng = np.random.default_rng(1)
    dense = rng.random((60, 8)) * (rng.random((60, 8)) < 0.3)
    image_R = np.repeat(np.arange(20), 3)
    per_image = dense.reshape(20, 3, 8)
    agg = per_image.max(1) if how == "max" else per_image.mean(1)
    top = top_images(sp.csr_matrix(dense), k=4, image_index=image_R, aggregate=how, chunk_rows=7)
    np.testing.assert_allclose(top.values, reference_top(agg, 4), rtol=1e-6)


def test_uniqueness_counts_match_pairwise_loop():
    rng = np.random.default_rng(2)
    top = rng.integers(0, 12, size=(15, 4))
    top[3] = top[2]  # identical sets
    top[5, 2:] = -1  # a short set
    res = uniqueness(top, min_active=0)  # every neuron with its partial set
    sets = [set(t[t >= 0]) for t in top]
    jac = np.array([[len(a & b) / len(a | b) for b in sets] for a in sets])
    iu = np.triu_indices(15, 1)
    want = [(jac[iu] > t).sum() for t in res.thresholds]
    np.testing.assert_array_equal(res.n_pairs_above, want)
    np.fill_diagonal(jac, 0)
    np.testing.assert_allclose(res.max_jaccard, jac.max(1))
    assert res.max_jaccard[2] == 1.0
    # the paper's rule at k=4: the short set (neuron 5) leaves, every other pair stays
    ruled = uniqueness(top, min_active=4)
    assert ruled.kept.tolist() == [i != 5 for i in range(15)] and ruled.n_pairs == 14 * 13 // 2
    others = np.delete(np.arange(15), 5)
    sub = jac[np.ix_(others, others)][np.triu_indices(14, 1)]
    np.testing.assert_array_equal(ruled.n_pairs_above, [(sub > t).sum() for t in res.thresholds])
    assert np.isnan(ruled.max_jaccard[5])


def test_hierarchy_depths_and_groups():
    names = [
        "00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
        "00002_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corone",
        "00003_Animalia_Chordata_Mammalia_Carnivora_Felidae_Felis_catus",
        "00004_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
    ]
    assert inat_label_path(names[0])[-1] == "corax"
    paths = label_paths_from_images([f"/d/{n}/img.jpg" for n in names])
    tax = encode_taxonomy(paths)
    top = np.array([[0, 1, 1], [0, 2, 3], [0, 0, 0], [1, -1, -1]])
    res = hierarchy(tax, top, group_sizes=[2, 2], min_active=0, round_depth=False)
    # neuron 0: pairs (0,1)=6, (0,1)=6, (1,1)=7 ; neuron 1: 2, 0, 0
    np.testing.assert_allclose(res.mean_depth[:3], [19 / 3, 2 / 3, 7])
    np.testing.assert_array_equal(res.majority_depth, [6, 0, 7, -1])
    assert np.isnan(res.mean_depth[3])
    np.testing.assert_allclose(res.group_mean_depth, [(19 / 3 + 2 / 3) / 2, 7])
    assert encode_taxonomy(["a/b", "a/c"])[:, 0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="sum to"):
        hierarchy(tax, top, group_sizes=[1, 1], min_active=0)


def test_agreement_from_a_synthetic_benchmark_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = [  # x preferred by users when R_user > 0.5
        (1, 2, 0.9, 0.95, 0.05, 0.7, 0.6),  # |Δ| 0.9, agree
        (3, 4, 0.2, 0.40, 0.30, 0.1, 0.2),  # |Δ| 0.1, disagree
        (5, 6, 0.1, 0.20, 0.60, 0.3, 0.2),  # |Δ| 0.4, agree
        (7, 8, 0.5, 0.20, 0.60, 0.3, 0.2),  # tie: left out
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k_x", "k_y", "R_user", "MS_x_dino", "MS_y_dino", "MS_x_clip", "MS_y_clip"])
        w.writerows(rows)
    pairs = read_pairs(path)
    assert set(pairs.scores) == {"clip", "dino"}
    res = agreement(*pairs.scores["dino"], pairs.r_user)
    assert res["n_used"] == 3 and res["agreement"] == pytest.approx(2 / 3)
    by_bin = {b["lo"]: b for b in res["bins"]}
    assert by_bin[0.8]["agreement"] == 1.0 and by_bin[0.0]["agreement"] == 0.0
    # vlmsae's own scores for the same neurons
    ours = np.zeros(10)
    ours[[1, 4, 6]] = 1.0
    mine = agreement(ours[pairs.k_x], ours[pairs.k_y], pairs.r_user)
    assert mine["agreement"] == 1.0 and mine["n_used"] == 3
    assert "dino" in agreement_markdown({"dino": res, "vlmsae": mine})


def test_recon_metrics():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6))
    assert r2(x, x) == 1.0
    assert r2(x, np.broadcast_to(x.mean(0), x.shape)) == pytest.approx(0.0, abs=1e-12)
    acc = ReconAccumulator()
    noisy = x + 0.1 * rng.normal(size=x.shape)
    for lo in range(0, 50, 7):
        acc.add(x[lo : lo + 7], noisy[lo : lo + 7])
    assert acc.result()["r2"] == pytest.approx(r2(x, noisy), rel=1e-12)
    codes = np.array([[0, 1.0, 0], [2, 0, 0]])
    assert l0(codes) == 1.0 == l0(sp.csr_matrix(codes))
    assert dead_fraction(codes) == pytest.approx(1 / 3) == dead_fraction(sp.csr_matrix(codes))


def test_tables():
    recs = [
        {"arch": "topk", "layer": 11, "expansion": 8, "max_ms": 0.5, "k": 20, "r2": 0.6},
        {"arch": "topk", "layer": 11, "expansion": 16, "max_ms": 0.7, "k": 1, "r2": 0.3},
    ]
    t = ms_table(recs)
    assert "| topk | 11 | 0.500 | 0.700 |" in t and "×8" in t
    assert "30.0" in tradeoff_table(recs)
