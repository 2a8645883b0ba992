"""What each Matryoshka group detects, on hand-made neurons: counts per taxonomy level and
other concept set, mixed neurons apart, and the LCA depth over object neurons only."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsae.demo.recovery import group_contents


def test_group_contents_counts_levels_and_keeps_background_out_of_depth():
    # 8 images: group g, subgroup s, leaf e (taxonomy top first)
    taxonomy = {
        "group": np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        "subgroup": np.array([0, 0, 1, 1, 2, 2, 3, 3]),
        "emoji": np.array([0, 1, 2, 3, 4, 5, 6, 7]),
    }
    # 4 neurons, groups of 2: n0 detects a group, n1 a background (its top images span
    # both groups: depth 0), n2 an emoji (same leaf twice), n3 nothing (mixed)
    top = np.array([[0, 2], [0, 4], [5, 5], [1, 6]])
    latent_set = np.array(["group", "background", "emoji", ""], dtype=object)
    n_active = np.array([20, 20, 20, 20])
    got = group_contents(latent_set, n_active, top, taxonomy, (2, 2), 2, ("group", "background"))
    assert got.counts[0] == {"group": 1, "subgroup": 0, "emoji": 0, "background": 1, "mixed": 0}
    assert got.counts[1] == {"group": 0, "subgroup": 0, "emoji": 1, "background": 0, "mixed": 1}
    assert got.level == [0.0, 2.0]
    # object neurons only: n0's pair shares the group (depth 1), n2's the leaf (depth 3);
    # the background neuron n1 (depth 0) and the mixed n3 are left out
    assert got.object_depth == pytest.approx([1.0, 3.0])
    quiet = group_contents(latent_set, np.array([20, 20, 1, 20]), top, taxonomy, (2, 2), 2)
    assert quiet.counts[1]["emoji"] == 0 and np.isnan(quiet.level[1])  # n2 not kept


def test_seed_bars_are_never_negative():
    """Equal seeds average an ulp above themselves; matplotlib refuses a negative bar (a full
    demo whose ×1 SAEs detected the same share on every seed failed at its figure)."""
    from vlmsae.demo.recovery_report import seed_bars

    assert np.mean([0.1, 0.1, 0.1]) > 0.1  # the float fact behind it
    mean, err = seed_bars([[0.1, 0.1, 0.1], [0.2, 0.4, np.nan]])
    assert err.shape == (2, 2) and (err >= 0).all()
    assert mean[1] == pytest.approx(0.3) and err[:, 1] == pytest.approx([0.1, 0.1])
