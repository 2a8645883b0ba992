"""Top images, uniqueness and hierarchy depth against brute-force references."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmsae.data.store import ActivationStore
from vlmsae.metrics.hierarchy import depth_by_group, label_paths, lca_depths, parse_taxonomy_name
from vlmsae.metrics.top_images import top_images
from vlmsae.metrics.uniqueness import uniqueness


def _brute_top(dense_NK: np.ndarray, n: int, positive_only: bool):
    k = dense_NK.shape[1]
    imgs = np.full((k, n), -1)
    for j in range(k):
        cands = [(-v, i) for i, v in enumerate(dense_NK[:, j]) if v > 0 or not positive_only]
        for r, (_, i) in enumerate(sorted(cands)[:n]):
            imgs[j, r] = i
    return imgs


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 40),
    k=st.integers(1, 12),
    n=st.integers(1, 6),
    chunk=st.integers(1, 17),
    seed=st.integers(0, 10_000),
)
def test_top_images_match_brute_force(n_rows, k, n, chunk, seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(-3, 4, size=(n_rows, k)).astype(np.float32)  # many ties
    got = top_images(dense, n, chunk_rows=chunk)
    np.testing.assert_array_equal(got.images, _brute_top(dense, n, positive_only=False))
    codes = sp.csr_matrix(np.maximum(dense, 0))
    got = top_images(codes, n, chunk_rows=chunk)
    want = _brute_top(np.maximum(dense, 0), n, positive_only=True)
    np.testing.assert_array_equal(got.images, want)
    for j in range(k):
        for r in range(n):
            if want[j, r] >= 0:
                assert got.values[j, r] == dense[want[j, r], j]


@pytest.mark.parametrize("how", ["max", "mean"])
def test_top_images_aggregate_tokens_per_image(tmp_path, how):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 4, size=30)  # rows per image
    image_R = np.repeat(np.arange(30), tokens)
    codes = sp.random(len(image_R), 20, density=0.2, random_state=1, format="csr", dtype=np.float32)
    dense = codes.toarray()
    per_image = np.stack(
        [getattr(dense[image_R == i], how)(axis=0) for i in range(30)]
    )
    store = ActivationStore.write(tmp_path / "c", codes, image_index=image_R, shard_rows=7)
    for source in (store, codes):
        got = top_images(source, 5, image_index=None if source is store else image_R,
                         aggregate=how, chunk_rows=11)
        np.testing.assert_array_equal(got.images, _brute_top(per_image, 5, positive_only=True))


def test_uniqueness_matches_brute_force():
    rng = np.random.default_rng(0)
    top = rng.integers(0, 12, size=(15, 4))
    top[3, -1] = -1  # incomplete: left out as dead
    got = uniqueness(top)
    alive = [i for i in range(15) if top[i, -1] >= 0]
    jac = {}
    for a, b in combinations(alive, 2):
        sa, sb = set(top[a]), set(top[b])
        jac[a, b] = len(sa & sb) / len(sa | sb)
    assert got.n_neurons == 14
    for t, count in got.pairs_above.items():
        assert count == sum(v > float(t) for v in jac.values())
    for i in alive:
        want = max(v for (a, b), v in jac.items() if i in (a, b))
        assert got.max_jaccard[i] == pytest.approx(want)
    assert np.isnan(got.max_jaccard[3])


def test_lca_depth_matches_brute_force():
    rng = np.random.default_rng(0)
    names = [f"{i:05d}_{a}_{b}_{c}" for i, (a, b, c) in enumerate(
        (a, b, c) for a in "xy" for b in "pq" for c in "uvw")]
    assert parse_taxonomy_name(names[0]) == ("x", "p", "u")
    image_class = rng.integers(0, len(names), size=50)
    paths = label_paths([parse_taxonomy_name(names[c]) for c in image_class])
    top = rng.integers(0, 50, size=(9, 6))
    top[0, 3:] = -1
    got = lca_depths(top, paths, block=4)
    for k in range(9):
        ids = [i for i in top[k] if i >= 0]
        depths = []
        for a, b in combinations(ids, 2):
            pa, pb = parse_taxonomy_name(names[image_class[a]]), parse_taxonomy_name(names[image_class[b]])
            d = 0
            while d < 3 and pa[d] == pb[d]:
                d += 1
            depths.append(d)
        assert got.mean[k] == pytest.approx(np.mean(depths))
        counts = np.bincount(depths, minlength=4)
        assert got.majority[k] == max(d for d in range(4) if counts[d] == counts.max())
    assert depth_by_group(got.mean, [3, 6]) == pytest.approx([got.mean[:3].mean(), got.mean[3:].mean()])
    with pytest.raises(ValueError, match="different lengths"):
        label_paths([("a", "b"), ("a",)])
