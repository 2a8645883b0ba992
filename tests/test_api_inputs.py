"""The public API takes what users have: SAE.encode/decode on NumPy arrays, store slices and
tensors; generate on one image or a list; store batches that say what happens to the rest."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vlmsae import SAE, ActivationStore, SAEConfig


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    return SAE(SAEConfig(d_in=16, d_sae=48, sparsity="topk", k=4)).eval()


def test_encode_and_decode_take_arrays_store_slices_and_tensors(sae, tmp_path):
    rng = np.random.default_rng(0)
    store = ActivationStore.write(
        tmp_path / "s", rng.normal(size=(40, 16)).astype(np.float16), dtype="float16"
    )
    rows = store[:10]  # float16, memory-mapped, read-only
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float16
    want = sae.encode(torch.from_numpy(rows.astype(np.float32)))
    got = sae.encode(rows)
    assert isinstance(got, torch.Tensor) and torch.equal(got, want)
    assert torch.equal(sae.encode(rows.astype(np.float64)), want)
    assert torch.equal(sae.encode(rows.reshape(2, 5, 16)), want.reshape(2, 5, 48))
    assert torch.equal(sae.encode_sparse(rows).to_dense(), want)
    assert torch.equal(sae(rows).codes, want)
    codes = want.detach().numpy()
    x_hat = sae.decode(want)
    assert torch.equal(sae.decode(codes), x_hat)
    assert torch.allclose(sae.decode(sp.csr_matrix(codes)), x_hat)
    with pytest.raises(ValueError, match="input width 8 does not match"):
        sae.encode(np.zeros((2, 8), np.float32))


def test_generate_takes_one_image_or_a_list(tiny_llava):
    from PIL import Image

    from vlmsae.steer.llava import generate

    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    many = generate(tiny_llava, images, "What is shown?", max_new_tokens=3)
    assert isinstance(many, list) and len(many) == 2
    one = generate(tiny_llava, images[1], "What is shown?", max_new_tokens=3)
    assert isinstance(one, str) and one == many[1]
    assert generate(tiny_llava, tuple(images), ["a?", "b?"], max_new_tokens=2)[0] == generate(
        tiny_llava, images[0], "a?", max_new_tokens=2
    )


def test_batches_yield_every_row_unless_drop_last(tmp_path):
    rows = np.arange(10_000, dtype=np.float32)[:, None].repeat(2, 1)
    store = ActivationStore.write(tmp_path / "s", rows)
    kept = list(store.batches(4096, seed=0, epochs=1))
    assert [len(b) for b in kept] == [4096, 4096, 1808]  # the rest as a short last batch
    seen = np.concatenate([b[:, 0] for b in kept])
    assert np.array_equal(np.sort(seen), rows[:, 0])  # every row exactly once
    full = list(store.batches(4096, seed=0, epochs=1, drop_last=True))
    assert [len(b) for b in full] == [4096, 4096]
    for a, b in zip(full, kept, strict=False):  # the same stream, less the short batch
        np.testing.assert_array_equal(a, b)
    two_epochs = list(store.batches(4096, seed=0, epochs=2, drop_last=True))
    assert len(two_epochs) == 4 and not np.array_equal(two_epochs[0], two_epochs[2])
    small = list(store.batches(20_000, epochs=1))  # larger than the store: one batch of all
    assert [len(b) for b in small] == [10_000]
    with pytest.raises(ValueError, match="no batch would be yielded"):
        next(store.batches(20_000, drop_last=True))


def test_training_from_a_store_uses_full_batches_only(tmp_path):
    from vlmsae.train.data import make_source

    rows = np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
    source = make_source(ActivationStore.write(tmp_path / "s", rows))
    sizes = [len(b) for _, b in zip(range(7), source.batches(32, 0, 0), strict=False)]
    assert sizes == [32] * 7  # 3 per epoch; the 4 rows left over wait for another epoch
