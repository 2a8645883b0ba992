"""SAEs from the hub through huggingface_hub's real download code, offline.

No hub is reachable here, so each test lays out a cache folder exactly as
``snapshot_download`` leaves it (``models--ORG--NAME/blobs/<hash>``, ``snapshots/<commit>/``
with relative symlinks into ``blobs``, ``refs/main`` holding the commit) and turns on
``HF_HUB_OFFLINE``; ``snapshot_download`` then resolves ``main`` through ``refs`` and
returns the snapshot, as it does for a user without network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmsae.formats.export import export_sae
from vlmsae.formats.hub import HubError, parse_hub_ref
from vlmsae.sae import SAE, SAEConfig

REPO = "vlmsae-test/tiny-saes"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _sae(seed: int, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        d_in=16,
        d_sae=64,
        k=4,
        model="openai/clip-vit-large-patch14-336",
        hookpoint="post_mlp_residual",
        layer=22,
        tokens="all",
        **kw,
    )
    sae = SAE(cfg, generator=g)
    with torch.no_grad():
        sae.b_enc.add_(0.2 * torch.randn(64, generator=g))
        if cfg.sparsity == "batchtopk":
            sae.threshold.fill_(0.1)
    return sae.eval()


def add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, Path], ref: str | None):
    """Put ``files`` (path in repo -> local file) into ``cache`` as a download does."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    for name, src in files.items():
        data = src.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it


def _files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache with REPO at COMMIT (main): a vlmsae SAE at the top, a dictionary_learning
    export in ``dl/trainer_0`` (as the paper's release: ``checkpoints/ae_N.pt``) and a
    SAELens export in ``lens/``; and an older commit with another SAE."""
    root = tmp_path_factory.mktemp("hub")
    saes = {
        "top": _sae(0),
        "dl": _sae(1, group_fractions=(0.25, 0.75)),
        "lens": _sae(2),
        "old": _sae(3, sparsity="topk"),
    }
    saes["top"].save(root / "top")
    export_sae(saes["dl"], root / "dl_export", "dictionary_learning")
    (root / "dl" / "trainer_0" / "checkpoints").mkdir(parents=True)
    (root / "dl_export" / "config.json").rename(root / "dl" / "trainer_0" / "config.json")
    (root / "dl_export" / "ae.pt").rename(root / "dl" / "trainer_0" / "checkpoints" / "ae_100.pt")
    export_sae(saes["lens"], root / "lens", "saelens")
    saes["old"].save(root / "old")
    (root / "top" / "README.md").write_text("a tiny SAE\n")
    cache = root / "cache"
    files = {**_files(root / "top"), **_files(root / "dl", "dl/"), **_files(root / "lens", "lens/")}
    add_snapshot(cache, REPO, COMMIT, files, "main")
    add_snapshot(cache, REPO, OLD_COMMIT, _files(root / "old"), None)
    return cache, saes


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _same(a: SAE, b: SAE) -> None:
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))
    assert a.cfg == b.cfg
    assert torch.allclose(a.encode(x), b.encode(x), atol=1e-5)
    assert torch.allclose(a(x).x_hat, b(x).x_hat, atol=1e-5)


def test_from_pretrained_reads_each_format_from_the_cache(hub, offline):
    cache, saes = hub
    top = SAE.from_pretrained(REPO, cache_dir=cache)
    _same(top, saes["top"])
    assert top.path == REPO  # the id as given, not the cache path
    dl = SAE.from_pretrained(REPO, subfolder="dl/trainer_0", cache_dir=cache)
    assert dl.cfg.group_sizes == (16, 48) and dl.cfg.layer == 22
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(dl.encode(x), saes["dl"].encode(x), atol=1e-5)
    lens = SAE.from_pretrained(f"{REPO}/lens", cache_dir=cache)
    _same(lens, saes["lens"])
    assert lens.path == f"{REPO}/lens"
    old = SAE.from_pretrained(REPO, revision=OLD_COMMIT, cache_dir=cache)
    _same(old, saes["old"])
    assert old.path == f"{REPO}@{OLD_COMMIT}"


def test_offline_misses_say_what_to_do(hub, offline):
    cache, _ = hub
    with pytest.raises(HubError, match="neither a local folder nor in the hub cache.*OFFLINE"):
        SAE.from_pretrained("vlmsae-test/not-cached", cache_dir=cache)
    with pytest.raises(ValueError, match="holds no SAE"):
        SAE.from_pretrained(REPO, subfolder="nothing/here", cache_dir=cache)
    with pytest.raises(ValueError, match="is not an SAE checkpoint"):
        SAE.load(cache / "no-such-folder")  # an absolute path is never sent to the hub


def test_cli_takes_a_hub_id_under_hf_hub_offline(hub, tmp_path):
    """The real environment variables, in a fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE."""
    cache, saes = hub
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    out = tmp_path / "exported"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmsae",
            "export",
            f"{REPO}/lens",
            "--format",
            "dictionary_learning",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    back = SAE.from_pretrained(out)
    x = torch.randn(8, 16)
    assert torch.allclose(back.encode(x), saes["lens"].encode(x), atol=1e-5)
    env["HF_HUB_CACHE"] = str(tmp_path / "empty-cache")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmsae",
            "export",
            REPO,
            "--format",
            "saelens",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert run.returncode != 0 and "HF_HUB_OFFLINE is set" in run.stdout + run.stderr


def test_parse_hub_ref():
    assert parse_hub_ref("org/name") == ("org/name", None, None)
    assert parse_hub_ref("org/name/a/b@v1") == ("org/name", "a/b", "v1")
    for not_a_ref in ("/abs/path", "./rel", "../up", "name", "org/name/../x", "org/name@"):
        assert parse_hub_ref(not_a_ref) is None
    assert parse_hub_ref("org/name@refs/pr/3") == ("org/name", None, "refs/pr/3")


@pytest.mark.parametrize(
    "revision", ["../../x", "..", "a/../b", "/abs", "v1/", ".hidden", "x.lock", "a b", "main;rm"]
)
def test_a_revision_that_could_leave_the_cache_is_refused(revision, tmp_path):
    from vlmsae.formats.hub import HubError

    with pytest.raises(HubError, match="is not a hub revision"):
        parse_hub_ref(f"org/name@{revision}")
    with pytest.raises(HubError, match="is not a hub revision"):
        SAE.from_pretrained("org/name", revision=revision)
    from vlmsae.cli import app

    result = CliRunner().invoke(
        app, ["export", f"org/name@{revision}", "--format", "saelens", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: ") and "is not a hub revision" in result.output
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())


def test_push_to_hub_uploads_the_sae_not_the_trainer_state(tmp_path, monkeypatch):
    """huggingface_hub's create_repo / upload_folder stand in for the network (recorded)."""
    import huggingface_hub

    calls = []

    def upload_folder(**kw):
        folder = Path(kw["folder_path"])
        calls.append({**kw, "files": sorted(p.name for p in folder.iterdir())})
        calls[-1]["loads"] = SAE.load(folder).cfg
        return "https://huggingface.co/org/sae/commit/abc"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: calls.append(("create", a)))
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    sae = _sae(4)
    assert sae.push_to_hub("org/sae").endswith("/commit/abc")
    assert calls[0] == ("create", ("org/sae",))
    assert calls[1]["files"] == ["config.json", "sae.safetensors"]
    assert calls[1]["loads"] == sae.cfg
    assert "checkpoints/*" not in calls[1]["allow_patterns"]  # a run folder's trainer state
    assert "config.json" in calls[1]["allow_patterns"]
    with pytest.raises(HubError, match="ORG/NAME"):
        sae.push_to_hub("no-org")


def test_cli_convert_push_to_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from typer.testing import CliRunner

    from vlmsae.cli import app

    pushed = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: None)
    monkeypatch.setattr(
        huggingface_hub, "upload_folder", lambda **kw: pushed.append(kw) or "url://commit"
    )
    export_sae(_sae(6), tmp_path / "dl", "dictionary_learning")
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(tmp_path / "dl" / "ae.pt"),
            "--out",
            str(tmp_path / "conv"),
            "--push-to-hub",
            "org/converted",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert pushed[0]["repo_id"] == "org/converted"
    assert Path(pushed[0]["folder_path"]) == tmp_path / "conv"
    assert "pushed" in result.output
    cfg = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert cfg["converted_from"] == str(tmp_path / "dl" / "ae.pt")


def test_bad_push_id_is_refused_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from vlmsae.cli import app

    export_sae(_sae(8), tmp_path / "dl", "dictionary_learning")
    args = ["convert", str(tmp_path / "dl" / "ae.pt"), "--out", str(tmp_path / "conv")]
    result = CliRunner().invoke(app, [*args, "--push-to-hub", "just-a-name"])
    assert result.exit_code != 0
    assert "ORG/NAME" in result.output + str(result.exception)
    assert not (tmp_path / "conv").exists()


def test_sae_folders_of_a_repository_file_list():
    """What an error lists for the paper's release (its file list as list_repo_files gives)."""
    from vlmsae.formats.hub import _folders_of

    run = "imagenet_train_activations_clip-vit-large-patch14-336_22_post_mlp_residual"
    files = [
        ".gitattributes",
        "README.md",
        f"batch_top_k_20_x8/{run}_batch_top_k_20_x8/trainer_0/config.json",
        f"batch_top_k_20_x8/{run}_batch_top_k_20_x8/trainer_0/checkpoints/ae_100000.pt",
        f"matroyshka_batch_top_k_20_x8/{run}_matroyshka_batch_top_k_20_x8/trainer_0/config.json",
        "lens/cfg.json",
        "lens/sae_weights.safetensors",
    ]
    assert _folders_of(files) == [
        f"batch_top_k_20_x8/{run}_batch_top_k_20_x8/trainer_0",
        "lens",
        f"matroyshka_batch_top_k_20_x8/{run}_matroyshka_batch_top_k_20_x8/trainer_0",
    ]
    assert _folders_of([f"s{i}/ae.pt" for i in range(10)], limit=2) == [
        "s0",
        "s1",
        "... (10 in all)",
    ]


def test_cache_sae_option_takes_a_hub_id(tmp_path, offline, monkeypatch):
    """`vlmsae cache --sae ORG/NAME/SUB` downloads (here: finds in the cache) and records
    the id as given in the code store's manifest."""
    from typer.testing import CliRunner

    from tiny_models import WIDTH, clip_processor, make_clip, random_images
    from vlmsae.cli import app
    from vlmsae.data.store import ActivationStore

    make_clip(2).save_pretrained(tmp_path / "clip")
    clip_processor().save_pretrained(tmp_path / "clip")
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i, im in enumerate(random_images(2)):
        im.save(tmp_path / "imgs" / "a" / f"{i}.png")
    sae = SAE(SAEConfig(d_in=WIDTH, d_sae=64, sparsity="relu", k=None, layer=1)).eval()
    sae.save(tmp_path / "sae")
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/clip-saes", COMMIT, _files(tmp_path / "sae", "layer1/"), "main")
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: set it too
    args = [
        "cache",
        "--model",
        tmp_path / "clip",
        "--data",
        tmp_path / "imgs",
        "--out",
        tmp_path / "out",
        "--layer",
        "1",
        "--tokens",
        "all",
        "--dtype",
        "float32",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--sae",
        "org/clip-saes/layer1",
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "out" / "codes_layer_1" / "manifest.json").read_text())
    assert manifest["sae"] == "org/clip-saes/layer1"
    assert len(ActivationStore(tmp_path / "out" / "codes_layer_1")) == 2 * 17  # CLS + 4x4
