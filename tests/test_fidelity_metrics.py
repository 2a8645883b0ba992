"""The paper's conventions for uniqueness, hierarchy and max MS, on crafted top-image sets
whose answers are computed by hand from the definitions (not from the paper's code)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsae.core.errors import UserError
from vlmsae.metrics.hierarchy import encode_taxonomy, hierarchy, label_paths_from_images
from vlmsae.metrics.maxms import max_ms_stats, max_ms_summary
from vlmsae.metrics.tables import ms_tables
from vlmsae.metrics.top_images import TopImages, kept_neurons
from vlmsae.metrics.uniqueness import uniqueness

# Images 0-9: leaf (a, x, 1); 10-15: leaf (a, x, 2); 16-31: leaf (b, y, 1).
LABELS = [("a", "x", "1")] * 10 + [("a", "x", "2")] * 6 + [("b", "y", "1")] * 16
VALUES = np.linspace(2.0, 1.0, 16, dtype=np.float32)  # best first


def _crafted() -> TopImages:
    """Five neurons with 16 top images each, best first.

    P: 10 images of leaf 1 then 6 of leaf 2 -> its two weakest share a leaf.
    Q: the same 16 images, the weakest of leaf 1 and the next of leaf 2.
    S: 16 images of leaf (b, y, 1).
    R: active on 15 images only (16th value 0, no image): left out by the paper's rule.
    N: a raw neuron whose 16th value is negative: the paper's rule (!= 0) keeps it.
    """
    p = list(range(16))
    q = [*range(9), *range(10, 16), 9]
    s = list(range(16, 32))
    r = [*range(16, 31), -1]
    n = list(range(16, 32))
    idx = np.array([p, q, s, r, n], np.int64)
    val = np.tile(VALUES, (5, 1))
    val[3, -1] = 0.0
    val[4] = np.linspace(1.0, -0.5, 16)
    return TopImages(idx, val)


def test_kept_neurons_is_the_16th_value_rule():
    top = _crafted()
    assert kept_neurons(top).tolist() == [True, True, True, False, True]
    assert top.kept(16).tolist() == [True, True, True, False, True]
    # a bare index array sees only missing images: the same rule for sparse codes
    assert kept_neurons(top.indices).tolist() == [True, True, True, False, True]
    assert kept_neurons(top, 0).all() and kept_neurons(top, 15).all()
    with pytest.raises(UserError, match="top-images --k 17"):
        kept_neurons(top, 17)


def test_uniqueness_drops_neurons_with_a_zero_16th_value():
    top = _crafted()
    res = uniqueness(top)
    # kept: P, Q, S, N. P = Q (Jaccard 1); S = N (Jaccard 1); P/Q vs S/N disjoint (0)
    assert res.n_pairs == 6 and res.n_dropped == 1
    assert res.thresholds[0] == 0.0
    assert res.n_pairs_above.tolist() == [2] * 10  # > 0.0 ... > 0.9
    assert np.isnan(res.max_jaccard[3]) and res.max_jaccard[0] == 1.0
    # the partial-set convention (min_active=0): R enters with its 15 images, which are
    # inside S's and N's 16: Jaccard 15/16 = 0.9375 with each
    loose = uniqueness(top, min_active=0)
    assert loose.n_pairs == 10
    assert loose.n_pairs_above.tolist() == [4] * 10
    assert loose.max_jaccard[3] == pytest.approx(15 / 16)


def test_uniqueness_counts_pairs_above_zero_and_strict_thresholds():
    # sets {0..15} and {8..23}: 8 shared of 24 -> 1/3; {0..15} and {12..27}: 4/28 = 1/7;
    # {8..23} and {12..27}: 12/20 = 0.6 exactly (not > 0.6)
    idx = np.array([range(16), range(8, 24), range(12, 28)], np.int64)
    res = uniqueness(TopImages(idx, np.tile(VALUES, (3, 1))))
    want = [3, 3, 2, 2, 1, 1, 0, 0, 0, 0]  # > 0.0, 0.1, ..., 0.9
    assert res.n_pairs_above.tolist() == want


def test_hierarchy_rounds_neuron_depths_and_breaks_ties_by_first_met():
    tax = encode_taxonomy(LABELS)
    top = _crafted()
    res = hierarchy(tax, top, group_sizes=[2, 3])
    # P and Q: 45 + 15 pairs in one leaf (depth 3), 60 across the two leaves (depth 2):
    # mean 300 / 120 = 2.5, rounded half to even -> 2; S and N: depth 3 everywhere
    np.testing.assert_allclose(res.mean_depth[[0, 1, 2, 4]], [2.5, 2.5, 3, 3])
    # a 60 / 60 tie: P's weakest pair (images 15, 14) shares a leaf -> 3 is met first;
    # Q's weakest pair (9, 15) does not -> 2 (the smallest depth would give 2 for both)
    assert res.majority_depth[:2].tolist() == [3, 2]
    assert res.kept.tolist() == [True, True, True, False, True]
    np.testing.assert_allclose(res.group_mean_depth, [2.0, 3.0])  # R is left out
    np.testing.assert_allclose(res.group_majority_depth, [2.5, 3.0])
    exact = hierarchy(tax, top, group_sizes=[2, 3], round_depth=False)
    np.testing.assert_allclose(exact.group_mean_depth, [2.5, 3.0])
    # a group whose only neuron is dropped has no depth
    alone = hierarchy(tax, TopImages(top.indices[[3, 0]], top.values[[3, 0]]), [1, 1])
    assert np.isnan(alone.group_mean_depth[0]) and alone.group_mean_depth[1] == 2.0
    # 1.5 rounds to 2 and 3.5 would round to 4: half to even agrees with Python's round()
    assert [round(x) for x in (0.5, 1.5, 2.5)] == np.round([0.5, 1.5, 2.5]).tolist()


def test_hierarchy_majority_matches_a_counter_over_pairs_on_random_sets():
    from collections import Counter
    from itertools import combinations

    rng = np.random.default_rng(0)
    labels = [tuple(rng.integers(0, 2, size=3).astype(str)) for _ in range(40)]
    tax = encode_taxonomy(labels)
    idx = np.stack([rng.permutation(40)[:16] for _ in range(50)])
    res = hierarchy(tax, idx)
    for k in range(50):
        order = idx[k][::-1]  # weakest first
        depths = []
        for i, j in combinations(order, 2):
            a, b = labels[i], labels[j]
            depths.append(next((d for d in range(3) if a[d] != b[d]), 3))
        assert res.majority_depth[k] == Counter(depths).most_common(1)[0][0]
        assert res.mean_depth[k] == pytest.approx(np.mean(depths))


def test_long_inat_names_split_at_every_underscore():
    base = "Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus"
    names = [f"00001_{base}_corax_corax", f"00002_{base}_corax_varius", f"00003_{base}_cornix"]
    paths = label_paths_from_images([f"/d/{n}/{i}.jpg" for i, n in enumerate(names * 6)])
    assert paths[0] == (*base.split("_"), "corax", "corax")
    tax = encode_taxonomy(paths)
    # corax_corax vs corax_varius share 7 levels, vs cornix 6; two corax_corax share 8, two
    # cornix 7 (joining the epithet into one species level would cap every depth at 7)
    idx = np.array([[0, 1, 2, 3, *range(4, 16)]])
    depth = hierarchy(tax, idx, min_active=0).mean_depth[0]
    pairs = {(0, 1): 7, (0, 2): 6, (1, 2): 6, (0, 0): 8, (1, 1): 8, (2, 2): 7}
    cls = [i % 3 for i in range(16)]
    want = np.mean([pairs[tuple(sorted((a, b)))] for i, a in enumerate(cls) for b in cls[i + 1 :]])
    assert depth == pytest.approx(want)


def test_max_ms_statistics_name_the_neuron_and_its_activity():
    ms = np.array([1.0, 0.8, 0.9, np.nan, 0.5])
    n_active = np.array([2, 20, 10, 0, 100])
    got = max_ms_stats(ms, n_active)
    assert got["max"] == (1.0, 0, 2)
    assert got["max_active"] == (0.8, 1, 20)
    assert got["p99"].value == 1.0  # the empirical 99th percentile of 4 scores is the top one
    assert max_ms_stats(ms, n_active, min_active=200)["max_active"] == (None, None, None)
    s = max_ms_summary(ms, n_active)
    assert (s["max_ms"], s["max_ms_active"], s["max_ms_active_n_active"]) == (1.0, 0.8, 20)
    text = ms_tables([{"arch": "batchtopk", "layer": 4, "expansion": 4, **s}])
    assert "the paper's statistic" in text and "active on >= 16 images" in text
    assert "0.800 (n_active=20)" in text and "1.00 (n_active=2)" in text  # 3 significant digits


def test_ms_summary_std_is_the_sample_std():
    from vlmsae.metrics.ms import summarize_ms

    s = summarize_ms(np.array([0.2, 0.4, np.nan, 0.9]))
    assert s["std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))  # torch.std's default
    assert summarize_ms(np.array([0.5, np.nan]))["std"] is None
