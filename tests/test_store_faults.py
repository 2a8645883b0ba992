"""Stores under hostile conditions: file names with line breaks, a manifest that lies, kills
in the middle of an atomic write, full disks, files where folders belong, the umask, and
runs rejected or interrupted before their first shard."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from tiny_models import WIDTH, clip_processor, make_clip, random_images
from vlmsae import SAE, SAEConfig
from vlmsae.core.errors import UserError
from vlmsae.core.io import OutputError, atomic_write, write_json
from vlmsae.core.lock import output_lock
from vlmsae.data.format import IMAGES_FILE, OLD_IMAGES_FILE, read_image_list
from vlmsae.data.images import load_dataset, open_rgb
from vlmsae.data.store import MANIFEST, ActivationStore, StoreError, StoreWriter
from vlmsae.encoders import Encoder
from vlmsae.encoders.cache import CacheConfig, cache_activations

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOSTILE = ["a\nb.png", "c\u2028d.png", "e\x85f.png", "g\x0ch.png", "i\rj.png", "plain.png"]


@pytest.fixture(scope="module")
def clip() -> Encoder:
    return Encoder(make_clip(2), clip_processor())


def _cfg(**kw) -> CacheConfig:
    base = dict(layers=(1,), batch_size=4, workers=0, dtype="float32", progress=False)
    return CacheConfig(**{**base, **kw})


def test_hostile_file_names_keep_images_aligned(clip, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [*HOSTILE, os.fsdecode(b"k\xff.png")]  # a name that is not UTF-8 at all
    for name, im in zip(names, random_images(len(names)), strict=True):
        im.save(os.path.join(os.fsencode(folder), os.fsencode(name)), format="PNG")
    data = load_dataset(folder)
    assert sorted(Path(p).name for p in data.paths) == sorted(names)
    result = cache_activations(clip, data, tmp_path / "out", _cfg())
    store = ActivationStore(result.stores["layer_1"])
    assert store.images == list(data.paths)  # one entry per image, in order
    assert len((store.dir / IMAGES_FILE).read_bytes().split(b"\n")) == len(names) + 1
    assert all(open_rgb(p).image is not None for p in store.images)
    assert not (store.dir / OLD_IMAGES_FILE).exists()


def test_old_images_txt_still_reads(tmp_path):
    store = ActivationStore.write(tmp_path / "s", np.ones((3, 2), np.float32))
    (store.dir / OLD_IMAGES_FILE).write_text("x/a.png\nx/c\u2028d.png\nx/e\x0cf.png\n")
    assert store.images == ["x/a.png", "x/c\u2028d.png", "x/e\x0cf.png"]
    (store.dir / IMAGES_FILE).write_text('"x/a.png"\n{broken\n')
    with pytest.raises(StoreError, match=r"images.jsonl is damaged \(line 2"):
        read_image_list(store.dir)


def _edit_manifest(store_dir: Path, edit) -> None:
    manifest = json.loads((store_dir / MANIFEST).read_text())
    edit(manifest)
    (store_dir / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("extra", [500, -3])
def test_manifest_rows_are_checked_against_shards(tmp_path, extra):
    ActivationStore.write(tmp_path / "s", np.ones((20, 4), np.float32), shard_rows=8)

    def lie(m):
        m["shards"][1]["rows"] += extra
        m["n_rows"] += extra

    _edit_manifest(tmp_path / "s", lie)
    with pytest.raises(StoreError, match=r"shard-00001.npy holds \(8, 4\) where the manifest says"):
        ActivationStore(tmp_path / "s")


def test_manifest_of_codes_and_missing_files_are_checked(tmp_path):
    codes = sp.random(30, 16, density=0.2, format="csr", random_state=0, dtype=np.float32)
    ActivationStore.write(tmp_path / "c", codes, shard_rows=10)
    _edit_manifest(tmp_path / "c", lambda m: m["shards"][2].update(nnz=m["shards"][2]["nnz"] + 1))
    with pytest.raises(StoreError, match="shard-00002: .* nonzeros"):
        ActivationStore(tmp_path / "c")
    ActivationStore.write(tmp_path / "d", np.ones((20, 4), np.float32), shard_rows=8)
    (tmp_path / "d" / "shard-00002.npy").unlink()
    with pytest.raises(StoreError, match="shard-00002.npy is missing"):
        ActivationStore(tmp_path / "d")


# -- kills and temporary files ---------------------------------------------------------------
KILL_AT_REPLACE = """
import os, signal, sys
import numpy as np
from vlmsae.data.store import StoreWriter
out, target, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_replace, seen = os.replace, [0]
def replace(src, dst):
    if str(dst).endswith(target):
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written, not yet renamed
    real_replace(src, dst)
os.replace = replace
w = StoreWriter(out, 4, shard_rows=2)
for i in range(6):
    w.add(np.full((1, 4), i, np.float32), [i])
    w.mark(i + 1)
w.close(images=[f"{i}.png" for i in range(6)])
"""


@pytest.mark.parametrize(
    "target, nth, resumable",
    [("/manifest.json", 2, False), ("/manifest.json", 3, True), ("/rows.npy", 1, True)],
)
def test_temps_of_a_killed_writer_are_removed(tmp_path, target, nth, resumable):
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_REPLACE, str(out), target, str(nth)],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temps = list(out.glob(f".{target[1:]}.*.tmp"))
    assert len(temps) == 1  # what the kill left behind
    w = StoreWriter(out, 4, shard_rows=2, resume=True)
    assert not list(out.glob(".*.tmp"))
    assert (w.images_done > 0) == resumable  # no complete shard listed: started over
    for i in range(w.images_done, 6):
        w.add(np.full((1, 4), i, np.float32), [i])
        w.mark(i + 1)
    store = w.close(images=[f"{i}.png" for i in range(6)])
    np.testing.assert_array_equal(store.to_numpy()[:, 0], np.arange(6))
    assert store.images == [f"{i}.png" for i in range(6)]


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o002)
        ActivationStore.write(tmp_path / "s", np.ones((2, 2), np.float32))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    for f in ("manifest.json", "rows.npy", "shard-00000.npy"):
        assert (tmp_path / "s" / f).stat().st_mode & 0o777 == 0o664, f


# -- full disks and files where folders belong -----------------------------------------------
def test_full_disk_at_the_final_manifest_is_one_clear_error(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", 4, shard_rows=2)
    for i in range(4):
        w.add(np.ones((1, 4), np.float32), [i])
        w.mark(i + 1)
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(MANIFEST):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError) as e:
        w.close(images=["a", "b", "c", "d"])
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert str(e.value) == (
        f"cannot write {tmp_path / 's' / MANIFEST} (No space left on device); the disk is full: "
        "free space and run again (with --resume where the command has it)"
    )
    assert not list((tmp_path / "s").glob(".*.tmp"))
    monkeypatch.setattr(os, "replace", real_replace)
    store = StoreWriter(tmp_path / "s", 4, shard_rows=2, resume=True).close(images=list("abcd"))
    assert len(store) == 4 and store.images == list("abcd")


def test_file_where_a_folder_belongs(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    for where in (tmp_path / "taken", tmp_path / "taken" / "store"):
        with pytest.raises(OutputError, match=r"a file stands where a folder is expected"):
            StoreWriter(where, 4)
        with (
            pytest.raises(OutputError, match=r"choose another --out"),
            output_lock(where, "vlmsae cache"),
        ):
            pass
    with pytest.raises(OutputError, match="a file stands where a folder"):
        atomic_write(tmp_path / "taken" / "x.json", lambda p: p.write_text("{}"))


# -- runs rejected or interrupted before their first shard -----------------------------------
def test_rejected_options_write_nothing_then_the_corrected_run_works(clip, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(random_images(6)):
        im.save(folder / f"{i}.png")
    data, out = load_dataset(folder), tmp_path / "out"
    with pytest.raises(UserError, match=r"random:99 asks for 99 tokens .* makes 17 per image"):
        cache_activations(clip, data, out, _cfg(tokens="random:99"))
    sae = SAE(SAEConfig(d_in=7, d_sae=12, sparsity="relu", k=None, layer=1))
    with pytest.raises(UserError, match=f"width 7, but layer_1 .* has width {WIDTH}"):
        cache_activations(clip, data, out, _cfg(), sae=sae)
    assert not out.exists()  # nothing was written
    # a run killed before its first shard: manifests exist, no shard is listed
    for layer in ("layer_1",):
        StoreWriter(out / layer, WIDTH, meta={"tokens": "random:2"})
    result = cache_activations(clip, data, out, _cfg(tokens="random:4"))  # no --resume asked
    store = ActivationStore(result.stores["layer_1"])
    assert len(store) == 6 * 4 and store.manifest["tokens"] == "random:4"
    with pytest.raises(FileExistsError, match="already holds a complete store"):
        cache_activations(clip, data, out, _cfg(tokens="random:4"))


def test_cli_refuses_too_many_random_tokens_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from tiny_models import make_clip_full
    from vlmsae.cli import app

    make_clip_full(2).save_pretrained(tmp_path / "model")
    clip_processor().save_pretrained(tmp_path / "model")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(random_images(3)):
        im.save(folder / f"{i}.png")
    args = ["cache", "--model", str(tmp_path / "model"), "--data", str(folder), "--out",
            str(tmp_path / "out"), "--layer", "1", "--workers", "0", "--device", "cpu"]  # fmt: skip
    bad = CliRunner().invoke(app, [*args, "--tokens", "random:99"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    errors = [line for line in bad.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: --tokens random:99 asks for 99 tokens")
    assert not (tmp_path / "out").exists()
    good = CliRunner().invoke(app, [*args, "--tokens", "random:3"])
    assert good.exit_code == 0, good.output
