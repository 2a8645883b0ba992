"""MS and top images on 2 gloo processes equal one process (every rank gets the result).

Each rank streams its share of the rows (whole images: a share never splits an image's
tokens); MS sums are all-reduced, top-k lists merged in image order. ``score --sae`` and
``top-images --sae`` encode only the rows of the rank's share with the SAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from ranks import run_ranks
from vlmsae.cli import app
from vlmsae.core import dist
from vlmsae.data.store import ActivationStore
from vlmsae.metrics.ms import monosemanticity
from vlmsae.metrics.top_images import top_images
from vlmsae.sae import SAE, SAEConfig


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


@pytest.fixture(scope="module")
def sae_inputs(tmp_path_factory) -> Path:
    """A store of 1 to 3 tokens per image (uneven: shares end at image boundaries), the
    images' embeddings and a BatchTopK SAE with an inference threshold."""
    root = tmp_path_factory.mktemp("sae_inputs")
    rng = np.random.default_rng(2)
    n_images = 61
    image_R = np.repeat(np.arange(n_images), rng.integers(1, 4, n_images))
    acts = rng.normal(size=(len(image_R), 8)).astype(np.float32) + 0.5
    ActivationStore.write(root / "acts", acts, {"layer": 3}, image_index=image_R, shard_rows=16)
    emb = rng.normal(size=(n_images, 5)).astype(np.float32)
    ActivationStore.write(root / "emb", emb, kind="embeddings")
    sae = SAE(SAEConfig(d_in=8, d_sae=32, sparsity="batchtopk", k=4))
    sae.threshold.fill_(0.05)
    sae.save(root / "sae")
    return root


def _sae_commands(root: str, out: str) -> None:
    """``score --sae`` and ``top-images --sae`` into ``out`` (on each rank, or in one
    process), counting the rows the SAE encodes in ``out/encoded-<rank>``."""
    encoded = [0]
    encode = SAE.encode

    def counting_encode(self, x, mode=None):
        encoded[0] += x.shape[0]
        return encode(self, x, mode)

    SAE.encode = counting_encode  # this process only (each rank is a forked child)
    try:
        inputs = ["--sae", f"{root}/sae", "--chunk-rows", "16"]
        for args in (
            ["score", "--activations", f"{root}/acts", "--embeddings", f"{root}/emb"],
            ["top-images", f"{root}/acts", "--k", "4"],
        ):
            result = CliRunner().invoke(app, [*args, *inputs, "--out", f"{out}/{args[0]}"])
            assert result.exit_code == 0, result.output
    finally:
        SAE.encode = encode
    Path(out, f"encoded-{dist.rank()}").write_text(str(encoded[0]))


def test_two_rank_sae_scores_equal_one_process_and_split_the_encoding(tmp_path, sae_inputs):
    run_ranks(_sae_commands, 2, str(sae_inputs), str(tmp_path / "two"))
    _sae_commands(str(sae_inputs), str(tmp_path / "one"))
    one, two = tmp_path / "one", tmp_path / "two"
    np.testing.assert_allclose(
        np.load(two / "score/scores.npy"), np.load(one / "score/scores.npy"), rtol=1e-9
    )
    np.testing.assert_allclose(
        np.load(two / "score/raw_scores.npy"), np.load(one / "score/raw_scores.npy"), rtol=1e-9
    )
    assert np.isfinite(np.load(one / "score/scores.npy")).sum() > 10  # scores were compared
    for name in ("top_indices.npy", "top_values.npy"):
        np.testing.assert_array_equal(
            np.load(two / "top-images" / name), np.load(one / "top-images" / name)
        )
    summary_one = json.loads((one / "score/summary.json").read_text())
    summary_two = json.loads((two / "score/summary.json").read_text())
    for key in ("r2", "normalized_mse", "mse", "l0", "n_rows", "mean_ms", "max_ms"):
        assert summary_two[key] == pytest.approx(summary_one[key], rel=1e-9), key
    n_rows = len(ActivationStore(sae_inputs / "acts"))
    assert int((one / "encoded-0").read_text()) == 2 * n_rows  # score, then top-images
    ranks = [int((two / f"encoded-{r}").read_text()) for r in (0, 1)]
    # each rank about half (a 16-row block across the boundary is encoded on both ranks)
    assert sum(ranks) <= 2 * (n_rows + 16) and max(ranks) < 0.7 * 2 * n_rows
