"""Hugging Face datasets (save_to_disk, Parquet, a dataset folder by name) and WebDataset
shards cache the same rows as the image folder they were made from.

The sources are built from one ImageFolder with good and broken files (tests/image_files.py)
by the real libraries (``datasets``: ``Dataset.from_dict`` with an ``Image`` feature, then
``save_to_disk`` and ``to_parquet``; ``tarfile`` shards named as WebDataset names members),
in the folder's order. Each must list the same labels and class names, cache the same rows,
skip the same images with a reason, record its identity, resume after a SIGKILL to the same
store and give on 2 gloo ranks the store of one process.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest

from image_files import BAD, make_mixed_folder
from ranks import run_ranks
from tiny_models import clip_processor, make_clip, random_images
from vlmsae.core.errors import UserError
from vlmsae.data.images import load_dataset
from vlmsae.data.provenance import check_same_images, store_provenance
from vlmsae.data.sources import open_image, open_source, source_kind
from vlmsae.data.store import ActivationStore, StoreWriter
from vlmsae.encoders import Encoder
from vlmsae.encoders.cache import CacheConfig, cache_activations

datasets = pytest.importorskip(
    "datasets", reason="needs the hf extra (pip install 'vlmsae[hf]'): datasets"
)
NEEDS_WDS = pytest.mark.skipif(
    __import__("importlib").util.find_spec("webdataset") is None,
    reason="needs the wds extra (pip install 'vlmsae[wds]'): webdataset",
)
SOURCES = ("arrow", "parquet", "hf", pytest.param("webdataset", marks=NEEDS_WDS))


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory, monkeypatch):
    """Parquet and dataset folders are converted to Arrow in the datasets cache: a fresh one;
    offline (the libraries read HF_HUB_OFFLINE when first imported: set their copies too)."""
    import huggingface_hub.constants

    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_sources(folder: Path, root: Path, shards: int = 2) -> dict[str, str]:
    """The images of ``folder`` (an ImageFolder) as every other source, in its order; the
    ``--data`` of each."""
    listing = load_dataset(folder)
    blobs = [Path(p).read_bytes() for p in listing.paths]
    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=list(listing.classes))
    )
    rows = {"image": [{"bytes": b, "path": None} for b in blobs], "label": list(listing.labels)}
    table = datasets.Dataset.from_dict(rows, features=features)
    table.save_to_disk(str(root / "saved"))
    (root / "pq").mkdir()
    half = len(table) // 2
    table.select(range(half)).to_parquet(str(root / "pq" / "part-0.parquet"))
    table.select(range(half, len(table))).to_parquet(str(root / "pq" / "part-1.parquet"))
    (root / "shards").mkdir()
    per = -(-len(blobs) // shards)
    for s in range(shards):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per, min(len(blobs), (s + 1) * per)):
                suffix = Path(listing.paths[i]).suffix
                _tar_member(tar, f"{i:06d}{suffix}", blobs[i])
                meta = {"label": listing.classes[listing.labels[i]]}
                _tar_member(tar, f"{i:06d}.json", json.dumps(meta).encode())
                _tar_member(tar, f"{i:06d}.txt", f"image {i}".encode())
            if s == 0:  # a sample without an image member: listed, never fatal
                _tar_member(tar, "zz_no_image.json", b'{"label": "a"}')
    return {
        "folder": str(folder),
        "arrow": str(root / "saved"),
        "parquet": str(root / "pq" / "*.parquet"),
        "hf": f"hf:{root / 'pq'}",  # load_dataset by name: a local dataset folder
        "webdataset": str(root / "shards" / f"{{00000..{shards - 1:05d}}}.tar"),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sources")
    return write_sources(make_mixed_folder(root / "folder"), root)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(make_clip(2), clip_processor())


def _cfg(resume: bool = False, workers: int = 0) -> CacheConfig:
    return CacheConfig(layers=(1,), hookpoints=("post_mlp_residual", "post_projection"),
                       tokens="cls", dtype="float32", batch_size=3, workers=workers,
                       shard_rows=4, resume=resume, progress=False)  # fmt: skip


def _skipped(store: ActivationStore) -> list[int]:
    return [s["index"] for s in store.manifest["skipped"]]


@pytest.mark.parametrize("kind", SOURCES)
def test_each_source_lists_the_folder_images_labels_and_classes(sources, kind):
    folder = load_dataset(sources["folder"])
    data = open_source(sources[kind])
    assert source_kind(sources[kind]) == kind and data.layout == kind
    assert len(data) == len(folder) and len(set(data.keys)) == len(data)
    assert data.labels == folder.labels and data.classes == folder.classes
    assert open_source(sources[kind]).keys == data.keys  # a stable order
    for i in (0, 5, len(data) - 1):  # every key opens to the pixels of the same file
        a, b = open_image(data.keys[i]), open_image(folder.paths[i])
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert a.image.tobytes() == b.image.tobytes()
    assert data.source["kind"] == kind
    if kind == "webdataset":
        assert [s["bytes"] for s in data.source["shards"]] == [
            os.path.getsize(s["file"]) for s in data.source["shards"]
        ]
        assert data.captions[3] == "image 3"
        assert [r for _, r in data.skipped] == ["no image member (members: .json)"]
    else:
        assert data.source["fingerprint"] and data.source["files"]


def test_every_limit_and_label_columns(sources):
    folder = load_dataset(sources["folder"], every=2, limit=5)
    data = open_source(sources["arrow"], every=2, limit=5)
    assert data.labels == folder.labels and [k.rsplit("#")[1] for k in data.keys] == [
        "0", "2", "4", "6", "8"
    ]  # fmt: skip
    by_name = open_source(sources["arrow"], label_columns=["label"], image_column="image")
    assert by_name.label_sets["label"] == (by_name.labels, by_name.classes)
    with pytest.raises(UserError, match="no column 'picture'"):
        open_source(sources["arrow"], image_column="picture")
    with pytest.raises(UserError, match="image folder"):
        open_source(sources["folder"], image_column="image")


@pytest.mark.parametrize("kind", SOURCES)
def test_each_source_caches_the_rows_of_the_folder(sources, encoder, tmp_path, kind):
    ref = cache_activations(encoder, sources["folder"], tmp_path / "folder", _cfg())
    got = cache_activations(encoder, sources[kind], tmp_path / kind, _cfg(workers=2))
    assert got.n_images == ref.n_images and got.n_skipped == ref.n_skipped == len(BAD)
    for name in ("layer_1", "post_projection"):
        a, b = ActivationStore(ref.stores[name]), ActivationStore(got.stores[name])
        np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(b.rows, a.rows)
        assert _skipped(b) == _skipped(a) and all(s["reason"] for s in b.manifest["skipped"])
        assert b.images == list(open_source(sources[kind]).keys)
        assert b.manifest["data_source"]["kind"] == kind
        assert b.manifest["data_source"]["classes"] == ["a", "b"]
        # a store of another source is refused where stores are combined
        with pytest.raises(UserError, match="do not hold the same images"):
            check_same_images(store_provenance(a), store_provenance(b), "folder", kind)


def png_bytes(image) -> bytes:
    """The image encoded as PNG, as a Parquet / HF image column holds it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_broken_row_is_listed_and_the_budget_holds(tmp_path, encoder, monkeypatch):
    ims = random_images(4)
    blobs = [png_bytes(im) for im in ims]
    rows = [{"bytes": blobs[0], "path": None}, None, {"bytes": b"not an image", "path": None},
            {"bytes": blobs[3], "path": None}]  # fmt: skip
    table = datasets.Dataset.from_dict(
        {"image": rows}, features=datasets.Features(image=datasets.Image())
    )
    table.save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setenv("VLMSAE_MAX_IMAGE_PIXELS", str(40 * 48 - 1))  # every image is too big
    data = open_source(tmp_path / "saved")
    assert data.labels == (-1,) * 4 and data.classes == ()
    reasons = [data.open_reader().read(i).error for i in range(4)]
    assert "pixel budget" in reasons[0] and "pixel budget" in reasons[3]
    assert "null" in reasons[1] and "cannot identify image" in reasons[2]
    monkeypatch.delenv("VLMSAE_MAX_IMAGE_PIXELS")
    result = cache_activations(encoder, data, tmp_path / "out", _cfg())
    store = ActivationStore(result.stores["post_projection"])
    assert _skipped(store) == [1, 2] and len(store) == 2


def _cache_then_sigkill(spec: str, out: str) -> None:
    """Cache ``spec`` and SIGKILL this process after the third shard boundary."""
    marks = []
    original = StoreWriter.mark

    def mark_then_die(self, images_end):
        original(self, images_end)
        marks.append(images_end)
        if len(marks) == 8:  # 4 batches for each of 2 stores: shards are on disk
            os.kill(os.getpid(), signal.SIGKILL)

    StoreWriter.mark = mark_then_die
    cache_activations(Encoder(make_clip(2), clip_processor()), spec, out, _cfg())


@pytest.mark.parametrize("kind", ["parquet", pytest.param("webdataset", marks=NEEDS_WDS)])
def test_resume_after_sigkill_is_exact(sources, encoder, tmp_path, kind):
    ref = cache_activations(encoder, sources[kind], tmp_path / "ref", _cfg())
    proc = multiprocessing.get_context("fork").Process(
        target=_cache_then_sigkill, args=(sources[kind], str(tmp_path / "run"))
    )
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    killed = json.loads((tmp_path / "run" / "layer_1" / "manifest.json").read_text())
    assert not killed["complete"] and 0 < killed["shards"][-1]["images_end"] < ref.n_images
    got = cache_activations(encoder, sources[kind], tmp_path / "run", _cfg(resume=True))
    for name in ("layer_1", "post_projection"):
        a, b = ActivationStore(ref.stores[name]), ActivationStore(got.stores[name])
        np.testing.assert_array_equal(b.to_numpy(), a.to_numpy())
        np.testing.assert_array_equal(b.rows, a.rows)
        assert b.images == a.images and _skipped(b) == _skipped(a)
        assert b.manifest["images_sha256"] == a.manifest["images_sha256"]


def _cache_on_ranks(spec: str, out: str) -> None:
    cache_activations(Encoder(make_clip(2), clip_processor()), spec, out, _cfg())


@pytest.mark.parametrize("kind", ["arrow", pytest.param("webdataset", marks=NEEDS_WDS)])
def test_two_gloo_ranks_equal_one_process(sources, encoder, tmp_path, kind):
    ref = cache_activations(encoder, sources[kind], tmp_path / "one", _cfg())
    run_ranks(_cache_on_ranks, 2, sources[kind], str(tmp_path / "two"), timeout=180)
    for name in ("layer_1", "post_projection"):
        a, b = ActivationStore(ref.stores[name]), ActivationStore(tmp_path / "two" / name)
        np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(b.rows, a.rows)
        assert b.images == a.images and _skipped(b) == _skipped(a)
        for key in ("images_sha256", "data_source", "dataset_root", "split"):
            assert b.manifest[key] == a.manifest[key]


def test_evaluate_reads_every_label_column_of_the_source(tmp_path, encoder):
    from vlmsae.evaluate.label_sources import load_labels

    ims = random_images(6)
    blobs = [png_bytes(im) for im in ims]
    features = datasets.Features(
        image=datasets.Image(),
        animal=datasets.ClassLabel(names=["cat", "dog", "owl"]),
        indoor=datasets.ClassLabel(names=["no", "yes"]),
    )
    rows = {"image": [{"bytes": b, "path": None} for b in blobs],
            "animal": [0, 1, 2, 0, 1, 2], "indoor": [1, 1, 0, 0, 1, 0]}  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    data = open_source(tmp_path / "saved")  # two ClassLabel columns: no default label
    assert data.labels == (-1,) * 6 and data.label_sets == {}
    result = cache_activations(encoder, data, tmp_path / "acts", _cfg())
    store = ActivationStore(result.stores["post_projection"])
    labels = load_labels(store, None)  # the store's own source, every ClassLabel column
    assert labels.names == ["animal:cat", "animal:dog", "animal:owl", "indoor:no", "indoor:yes"]
    expected = np.zeros((6, 5), bool)
    for n, (a, d) in enumerate(zip(rows["animal"], rows["indoor"], strict=True)):
        expected[n, a] = expected[n, 3 + d] = True
    np.testing.assert_array_equal(labels.present.toarray(), expected)
    one = open_source(tmp_path / "saved", label_columns=["indoor"])
    assert one.labels == tuple(rows["indoor"]) and one.classes == ("no", "yes")


@NEEDS_WDS
def test_the_cli_caches_shards_and_refuses_a_missing_one_in_one_line(sources, tmp_path):
    from typer.testing import CliRunner

    from vlmsae.cli import app

    runner = CliRunner()
    common = ["cache", "--model", "toyworld", "--layer", "1", "--batch-size", "4",
              "--workers", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    out = str(tmp_path / "a")
    ok = runner.invoke(app, [*common, "--data", sources["webdataset"], "--out", out])
    assert ok.exit_code == 0, ok.output + repr(ok.exception)
    store = ActivationStore(tmp_path / "a" / "layer_1")
    assert store.images[0].startswith("tar:") and len(store.manifest["skipped"]) == len(BAD)
    shown = runner.invoke(app, ["inspect", str(tmp_path / "a" / "layer_1")])
    assert shown.exit_code == 0 and "data: webdataset" in shown.output
    assert "(2 files," in shown.output
    missing = sources["webdataset"].replace("00001}", "00002}")
    for data, words in ((missing, "no file"), ("hf:nobody/nothing-here", "cannot load hf")):
        bad = runner.invoke(app, [*common, "--data", data, "--out", str(tmp_path / "b")])
        lines = [ln for ln in bad.output.splitlines() if ln.strip()]
        assert bad.exit_code == 2 and lines[-1].startswith("Error:") and words in lines[-1]
        assert "Traceback" not in bad.output


@pytest.mark.parametrize("kind", ["arrow", pytest.param("webdataset", marks=NEEDS_WDS)])
def test_the_explorer_and_grids_extract_the_images_of_a_source(tmp_path, kind):
    from explore_fixtures import make_images, make_sae, make_token_store, read_js
    from vlmsae.data.decode import open_rgb
    from vlmsae.explore.build import build_site
    from vlmsae.report.grid import tile_panel

    make_images(tmp_path / "folder", 8)
    files = load_dataset(tmp_path / "folder").paths  # the order every source follows
    data = open_source(write_sources(tmp_path / "folder", tmp_path)[kind])
    make_token_store(tmp_path / "acts", list(data.keys), d=8)
    make_sae(tmp_path / "sae", d=8, d_sae=16)
    build_site(tmp_path / "sae", tmp_path / "acts", tmp_path / "site")  # links by default
    index = read_js(tmp_path / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    assert index["meta"]["thumbs"] and index["images"]  # no file to link: thumbnails
    for src in index["images"]:
        i = int(Path(src).stem)
        thumb = open_rgb(tmp_path / "site" / src).image
        assert thumb is not None and thumb.tobytes() == open_rgb(files[i]).image.tobytes()
    listing = json.loads((tmp_path / "site" / "data" / "images.json").read_text())
    assert listing["images"] == {}  # the server answers only the site's own files
    panel, drawn = tile_panel([*data.keys[:3], data.keys[0] + "-missing"], side=2, tile=8)
    assert drawn == 3 and panel.shape == (16, 16, 3)
