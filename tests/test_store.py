"""Round-trips and resumption of the activation store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from vlmsae.cli import app
from vlmsae.data.store import ActivationStore, StoreError, StoreWriter


def _write_images(
    writer: StoreWriter, acts: np.ndarray, rows_per_image: int, start: int, stop: int
):
    for i in range(start, stop):
        rows = acts[i * rows_per_image : (i + 1) * rows_per_image]
        writer.add(rows, np.full(rows_per_image, i), np.arange(rows_per_image))
        writer.mark(i + 1)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dense_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(1000, 12)).astype(np.float32)
    store = ActivationStore.write(tmp_path / "s", acts, dtype=dtype, shard_rows=128)
    assert len(store) == 1000 and store.d == 12 and len(store.shards) > 5
    np.testing.assert_array_equal(store[:], acts.astype(dtype))
    np.testing.assert_array_equal(store[100:400], acts[100:400].astype(dtype))
    idx = np.array([999, 3, 500, 3, 128])
    np.testing.assert_array_equal(store[idx], acts[idx].astype(dtype))
    np.testing.assert_array_equal(store[-1], acts[-1].astype(dtype))
    chunks = np.concatenate([c for _, c in store.iter_chunks(77)])
    np.testing.assert_array_equal(chunks, acts.astype(dtype))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sparse_round_trip(tmp_path, dtype):
    codes = sp.random(500, 64, density=0.05, format="csr", random_state=1, dtype=np.float32)
    # scipy.sparse has no float16: float16 code stores hold float16 on disk, float32 in memory
    want = codes.toarray().astype(dtype).astype(np.float32)
    store = ActivationStore.write(tmp_path / "c", codes, shard_rows=100, dtype=dtype)
    assert store.kind == "codes" and store.is_sparse and len(store) == 500
    assert store.manifest["dtype"] == dtype
    assert np.load(tmp_path / "c" / "shard-00000.values.npy").dtype == np.dtype(dtype)
    np.testing.assert_array_equal(store[:].toarray(), want)
    np.testing.assert_array_equal(store[50:260].toarray(), want[50:260])
    idx = np.array([499, 0, 250, 101])
    np.testing.assert_array_equal(store[idx].toarray(), want[idx])
    np.testing.assert_array_equal(store.to_numpy(), want)


def test_batches_cover_each_row_once_per_epoch(tmp_path):
    acts = np.arange(1000, dtype=np.float32)[:, None].repeat(3, 1)
    store = ActivationStore.write(tmp_path / "s", acts, shard_rows=300)
    seen = np.concatenate(
        [b[:, 0] for b in store.batches(10, epochs=1, buffer_rows=200, chunk_rows=50)]
    )
    assert len(seen) == len(np.unique(seen)) == 1000  # buffers of 200 divide evenly by 10
    assert not np.array_equal(seen, np.arange(1000))  # shuffled


def test_batches_skip_equals_consuming(tmp_path):
    acts = np.random.default_rng(0).normal(size=(900, 4)).astype(np.float32)
    store = ActivationStore.write(tmp_path / "s", acts, shard_rows=256)
    kw = dict(seed=3, buffer_rows=128, chunk_rows=32)
    it = store.batches(16, **kw)
    full = [next(it) for _ in range(130)]  # crosses an epoch boundary
    resumed = store.batches(16, skip=47, **kw)
    for want in full[47:]:
        np.testing.assert_array_equal(next(resumed), want)


def test_resume_equals_uninterrupted(tmp_path):
    acts = np.random.default_rng(0).normal(size=(60 * 4, 8)).astype(np.float32)
    images = [f"img{i}.png" for i in range(60)]

    ref = StoreWriter(tmp_path / "ref", 8, shard_rows=40)
    _write_images(ref, acts, 4, 0, 60)
    ref.skip(60, "bad.png", "truncated")
    ref_store = ref.close(images=images)

    w = StoreWriter(tmp_path / "run", 8, shard_rows=40)
    _write_images(w, acts, 4, 0, 33)  # "crash": rows of images 30..32 were only buffered
    (tmp_path / "run" / "shard-00099.npy").write_bytes(b"half a shard")
    with pytest.raises(FileExistsError, match="resume"):
        StoreWriter(tmp_path / "run", 8, shard_rows=40)
    w2 = StoreWriter(tmp_path / "run", 8, shard_rows=40, resume=True)
    assert w2.images_done == 30 and not (tmp_path / "run" / "shard-00099.npy").exists()
    _write_images(w2, acts, 4, w2.images_done, 60)
    w2.skip(60, "bad.png", "truncated")
    store = w2.close(images=images)

    np.testing.assert_array_equal(store[:], ref_store[:])
    np.testing.assert_array_equal(store.rows, ref_store.rows)
    assert store.images == images
    assert store.manifest["skipped"] == [{"index": 60, "path": "bad.png", "reason": "truncated"}]
    assert store.image_rows(7) == slice(28, 32)


def test_incomplete_store_refused_and_width_checked(tmp_path):
    w = StoreWriter(tmp_path / "s", 8)
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(ValueError, match="width d is 8"):
        w.add(np.zeros((2, 5), np.float32), [0, 0])
    w.add(np.zeros((2, 8), np.float32), [0, 1])
    w.mark(2)
    w._flush()  # one complete shard: the store is worth resuming, and only with d=8
    with pytest.raises(StoreError, match="d is 8"):
        StoreWriter(tmp_path / "s", 16, resume=True)
    with pytest.raises(StoreError, match="not a store"):
        ActivationStore(tmp_path / "nothing")


def test_full_disk_leaves_no_counted_shard(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", 4, shard_rows=10)
    _write_images(w, np.ones((40, 4), np.float32), 4, 0, 3)  # one shard written

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    with pytest.raises(StoreError, match="No space left"):
        _write_images(w, np.ones((40, 4), np.float32), 4, 3, 6)
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and manifest["n_rows"] == 12
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "manifest.json",
        "shard-00000.npy",
        "shard-00000.rows.npy",
    ]


def test_inspect_cli(tmp_path):
    ActivationStore.write(tmp_path / "s", np.zeros((5, 3), np.float32), meta={"model": "toy"})
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "toy" in result.output and "width d: 3" in result.output
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code != 0
