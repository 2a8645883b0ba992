"""Caching on 2 gloo processes gives the store one process writes (but for its shards).

Each rank encodes its share of the images of a folder with good and broken files into its
part of every store; rank 0 merges them. The merged stores hold the same rows, ``rows.npy``,
skipped list, image list and provenance as a single-process run. A rank killed mid-cache
resumes to the same stores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from image_files import BAD, make_mixed_folder
from ranks import run_ranks
from tiny_models import clip_processor, make_clip
from vlmsae.core import dist
from vlmsae.data.integrity import shard_files
from vlmsae.data.store import ActivationStore, StoreWriter
from vlmsae.data.verify import verify_path
from vlmsae.encoders import Encoder
from vlmsae.encoders.cache import CacheConfig, cache_activations, embed_images

STORES = ("layer_1", "post_projection")


def _cfg(resume: bool = False) -> CacheConfig:
    return CacheConfig(
        layers=(1,),
        hookpoints=("post_mlp_residual", "post_projection"),
        tokens="random:3",
        dtype="float32",
        batch_size=2,
        workers=0,
        shard_rows=5,  # several shards per rank
        resume=resume,
        progress=False,
    )


def _cache(folder: str, out: str, resume: bool = False) -> None:
    enc = Encoder(make_clip(4), clip_processor())
    cache_activations(enc, folder, out, _cfg(resume))
    embed_images(enc, folder, Path(out) / "embed", workers=0, progress=False, resume=resume)


def _cache_and_die(folder: str, out: str) -> None:
    if dist.init_from_env() and dist.rank() == 1:
        marks = []
        original = StoreWriter.mark

        def mark_then_die(self, images_end):
            original(self, images_end)
            marks.append(images_end)
            if len(marks) == 6:  # after some shards of this rank's part are written
                os._exit(3)

        StoreWriter.mark = mark_then_die
    _cache(folder, out)


def _manifest(path: Path) -> dict:
    """The manifest without what names shard files (their checksums: only their paths
    differ, the bytes of ``rows.npy`` and ``images.jsonl`` are the same)."""
    m = json.loads((path / "manifest.json").read_text())
    own = {k: v for k, v in m["checksums"].items() if "/" not in k and "shard-" not in k}
    return {**{k: v for k, v in m.items() if k not in ("shards", "n_ranks")}, "checksums": own}


def _assert_same_stores(a: Path, b: Path) -> None:
    for name in (*STORES, "embed"):
        sa, sb = ActivationStore(a / name), ActivationStore(b / name)
        np.testing.assert_allclose(sa.to_numpy(), sb.to_numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sa.rows, sb.rows)
        assert sa.images == sb.images
        assert _manifest(a / name) == _manifest(b / name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(make_mixed_folder(tmp_path_factory.mktemp("mixed")))


@pytest.fixture(scope="module")
def single(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    _cache(folder, str(out))
    return out


def test_two_rank_cache_equals_one_process(folder, single, tmp_path):
    run_ranks(_cache, 2, folder, str(tmp_path))
    _assert_same_stores(tmp_path, single)
    store = ActivationStore(tmp_path / "layer_1")
    assert store.manifest["n_ranks"] == 2 and len(store.manifest["skipped"]) == len(BAD)
    assert {s["file"].split("/")[1] for s in store.shards} == {"rank-00000", "rank-00001"}
    files = [f for s in store.shards for f in shard_files(s, False)]  # carried from the parts
    assert set(files) <= set(store.manifest["checksums"]) and verify_path(tmp_path).ok
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_skipped"] == len(BAD) and summary["stores"]["layer_1"]["rows"] == len(store)


def test_a_killed_rank_resumes_to_the_same_stores(folder, single, tmp_path):
    with pytest.raises(Exception, match="exit|terminated|signal|rank"):
        run_ranks(_cache_and_die, 2, folder, str(tmp_path))
    assert not (tmp_path / "layer_1" / "manifest.json").exists()  # not merged: incomplete
    part = ActivationStore(tmp_path / "layer_1/ranks/rank-00001", allow_incomplete=True)
    assert len(part.shards) > 0
    with pytest.raises(Exception, match="already holds|interrupted|resume"):
        run_ranks(_cache, 2, folder, str(tmp_path))  # refused without --resume
    run_ranks(_cache, 2, folder, str(tmp_path), True)
    _assert_same_stores(tmp_path, single)
