"""The fast MS equals the pairwise definition (brute force) on random and edge-case inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vlmsae.data.store import ActivationStore
from vlmsae.metrics import (
    compare_sae_raw,
    monosemanticity,
    monosemanticity_score,
    summarize_ms,
)
from vlmsae.metrics.ms import DEN_RTOL


def brute_force_ms(acts_NK: np.ndarray, emb_NE: np.ndarray) -> np.ndarray:
    """The paper's definition, pair by pair (the reference code's double loop)."""
    acts = np.asarray(acts_NK, np.float64)
    emb = np.asarray(emb_NE, np.float64)
    n, k = acts.shape
    norms = np.linalg.norm(emb, axis=1)
    out = np.full(k, np.nan)
    for j in range(k):
        a = acts[:, j]
        span = a.max() - a.min()
        if span == 0:
            continue
        t = (a - a.min()) / span
        num = den = 0.0
        for p in range(n):
            for q in range(p + 1, n):
                w = t[p] * t[q]
                s = (
                    0.0
                    if norms[p] == 0 or norms[q] == 0
                    else emb[p] @ emb[q] / (norms[p] * norms[q])
                )
                num += w * s
                den += w
        if den > DEN_RTOL * t.sum() ** 2:  # the documented rounding-level cut-off
            out[j] = num / den
    return out


def assert_ms_close(fast: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(fast[ok], ref[ok], rtol=1e-6, atol=1e-9)


def sparse_codes(rng: np.random.Generator, n: int, k: int, density: float) -> sp.csr_matrix:
    dense = rng.exponential(size=(n, k)) * (rng.random((n, k)) < density)
    return sp.csr_matrix(dense)


def test_dense_random_matches_brute_force():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(40, 12)) * 3 + 5  # raw neurons, offset and negative values
    emb = rng.normal(size=(40, 7))
    assert_ms_close(monosemanticity_score(acts, emb, chunk_rows=7), brute_force_ms(acts, emb))


def test_sparse_random_matches_brute_force_and_dense():
    rng = np.random.default_rng(1)
    dense = sparse_codes(rng, 60, 30, 0.15).toarray()
    dense[:, 0] = 0  # dead
    dense[:, 1] = 0
    dense[7, 1] = 2.0  # one active image
    codes = sp.csr_matrix(dense)
    emb = rng.normal(size=(60, 5)) + 1.0
    ref = brute_force_ms(codes.toarray(), emb)
    assert_ms_close(monosemanticity_score(codes, emb, chunk_rows=9), ref)
    assert_ms_close(monosemanticity_score(codes.toarray(), emb), ref)
    assert np.isnan(ref).any() and (~np.isnan(ref)).any()  # the draw covers both cases


def test_sparse_neuron_active_everywhere_and_negative_codes():
    """A sparse neuron stored on every row has min > 0; one with negative codes has min < 0:
    neither min is the implicit 0."""
    rng = np.random.default_rng(2)
    dense = rng.exponential(size=(25, 6)) * (rng.random((25, 6)) < 0.3)
    dense[:, 0] = rng.uniform(2, 3, size=25)  # always active, min ~2
    dense[:, 1] = -dense[:, 1]  # negative codes, implicit zeros are the max
    dense[::2, 2] = -rng.uniform(size=13)  # mixed signs, not full
    emb = rng.normal(size=(25, 4))
    ref = brute_force_ms(dense, emb)
    for chunk in (4, 25):
        assert_ms_close(monosemanticity_score(sp.csr_matrix(dense), emb, chunk_rows=chunk), ref)


def test_blocked_neurons_equal_one_block():
    rng = np.random.default_rng(3)
    codes = sparse_codes(rng, 50, 40, 0.2)
    emb = rng.normal(size=(50, 6))
    one = monosemanticity_score(codes, emb)
    blocked = monosemanticity_score(codes, emb, max_memory_bytes=8 * 6 * 7)  # 7 neurons/block
    np.testing.assert_allclose(blocked, one, rtol=1e-12, equal_nan=True)


def test_edge_cases_named_in_the_issue():
    rng = np.random.default_rng(4)
    n = 10
    emb = rng.normal(size=(n, 3))
    emb[3] = emb[2]  # duplicate images
    acts = np.zeros((n, 5))
    acts[:, 1] = 4.0  # constant neuron
    acts[5, 2] = 1.0  # a single active image
    acts[[2, 3], 3] = 1.0  # active on two duplicate images only: MS = 1
    acts[:, 4] = -rng.uniform(1, 2, size=n)  # negative raw activations
    res = monosemanticity(acts, emb)
    assert np.isnan(res.ms[:3]).all() and res.n_undefined == 3
    assert res.ms[3] == pytest.approx(1.0, abs=1e-12)
    assert_ms_close(res.ms, brute_force_ms(acts, emb))
    np.testing.assert_array_equal(res.n_active, [0, n, 1, 2, 0])
    np.testing.assert_allclose(res.max_activation[:4], [0, 4, 1, 1])


def test_two_images():
    emb = np.array([[1.0, 0.0], [0.6, 0.8]])
    acts = np.array([[1.0, 2.0], [3.0, 2.0]])
    ms = monosemanticity_score(acts, emb)
    # neuron 0 rescales to (0, 1): no pair with both weights > 0
    assert np.isnan(ms).all()
    ms = monosemanticity_score(
        np.array([[1.0], [3.0], [2.0]]), np.array([[1, 0], [0.6, 0.8], [0, 1]])
    )
    assert ms[0] == pytest.approx(0.8)  # only pair (image 1, image 2) has weight: cos = 0.8


@st.composite
def ms_inputs(draw):
    n = draw(st.integers(2, 9))
    k = draw(st.integers(1, 5))
    e = draw(st.integers(1, 4))
    vals = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, -1.0, 0.5, 3.25])
    acts = draw(hnp.arrays(np.float64, (n, k), elements=vals))
    if draw(st.booleans()):  # continuous values too
        acts = acts * draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0.1, 10)))
    emb = draw(
        hnp.arrays(np.float64, (n, e), elements=st.floats(-3, 3).filter(lambda x: abs(x) > 0.05))
    )
    if n > 2 and draw(st.booleans()):
        emb[1] = emb[0]  # duplicate images
        acts[1] = acts[0]
    return acts, emb


@settings(max_examples=150, deadline=None)
@given(ms_inputs(), st.integers(1, 4))
def test_property_fast_equals_brute_force(inputs, chunk):
    acts, emb = inputs
    ref = brute_force_ms(acts, emb)
    assert_ms_close(monosemanticity_score(acts, emb, chunk_rows=chunk), ref)
    assert_ms_close(monosemanticity_score(sp.csr_matrix(acts), emb, chunk_rows=chunk), ref)


def test_reads_stores(tmp_path):
    rng = np.random.default_rng(5)
    codes = sparse_codes(rng, 30, 20, 0.3).astype(np.float32)
    emb = rng.normal(size=(30, 4)).astype(np.float32)
    acts_store = ActivationStore.write(tmp_path / "codes", codes, shard_rows=8)
    emb_store = ActivationStore.write(tmp_path / "emb", emb, kind="embeddings", shard_rows=11)
    fast = monosemanticity_score(acts_store, emb_store, chunk_rows=7)
    assert_ms_close(fast, brute_force_ms(codes.toarray(), emb))


def test_row_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one row per image"):
        monosemanticity_score(np.zeros((3, 2)), np.zeros((4, 2)))


def test_summaries():
    ms = np.array([0.1, 0.5, np.nan, 0.9])
    s = summarize_ms(ms)
    assert s["n_undefined"] == 1 and s["max"] == 0.9 and s["argmax"] == 3
    assert s["mean"] == pytest.approx(0.5) and s["quantiles"]["q50"] == pytest.approx(0.5)
    c = compare_sae_raw(np.array([0.2, 0.6, 0.95, np.nan]), np.array([0.1, 0.5, 0.9]))
    assert c["share_above_best_raw"] == pytest.approx(1 / 3)
    assert c["share_above_median_raw"] == pytest.approx(2 / 3)
