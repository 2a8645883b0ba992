"""A tiny SAE over a token store of real image files, for the browser tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 4
"""Patches per image side: every image has a CLS token and SIDE² patch tokens."""


def read_js(path: Path, prefix: str):
    """The JSON payload of a data file of the site."""
    text = path.read_text()
    assert text.startswith(prefix), text[:80]
    return json.loads(text[len(prefix) :].rstrip().rstrip(";").rstrip(")"))


def make_images(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` small PNG files in two class folders (``red/``, ``blue/``)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        cls = ("red", "blue")[i % 2]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path.resolve()))
    return paths


def make_token_store(path: Path, image_paths: list[str], d: int, seed: int = 0):
    """An activation store with every token (CLS + SIDE² patches) of each image."""
    from vlmsae.data.store import StoreWriter

    rng = np.random.default_rng(seed)
    n_tok = 1 + SIDE * SIDE
    writer = StoreWriter(path, d, kind="activations", dtype="float32",
                         meta={"model": "tiny", "hookpoint": "post_mlp_residual", "layer": 0,
                               "tokens": "all"})  # fmt: skip
    for i in range(len(image_paths)):
        writer.add(rng.normal(size=(n_tok, d)).astype(np.float32), [i] * n_tok, range(n_tok))
        writer.mark(i + 1)
    return writer.close(images=image_paths, n_images=len(image_paths))


def make_sae(path: Path, d: int, d_sae: int, k: int = 4, groups=None):
    """A randomly initialised TopK SAE (Matryoshka groups when ``groups`` is given)."""
    import torch

    from vlmsae.sae import SAE, SAEConfig

    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=d, d_sae=d_sae, sparsity="topk", k=k, group_sizes=groups))
    sae.save(path)
    return sae


def build_tiny_site(root: Path, n_images: int, d: int, d_sae: int, min_active: int = 16) -> Path:
    """A tiny SAE over a token store, scored by `vlmsae score` (embedding store ``emb``),
    labelled by `vlmsae label` (toy CLIP, toy vocabulary) and explored with `vlmsae explore
    --copy-images` into ``root/site`` with a second MS column (``--embeddings
    second=emb2``); every step through the CLI."""
    from typer.testing import CliRunner

    from vlmsae.cli import app
    from vlmsae.data.store import StoreWriter

    paths = make_images(root / "imgs", n_images)
    make_token_store(root / "acts", paths, d)
    make_sae(root / "sae", d, d_sae, groups=(d_sae // 4, d_sae - d_sae // 4))
    emb = StoreWriter(root / "emb", 6, kind="embeddings", dtype="float32")
    emb.add(np.random.default_rng(1).normal(size=(n_images, 6)).astype(np.float32),
            np.arange(n_images))  # fmt: skip
    emb.mark(n_images)
    emb.close(images=paths, n_images=n_images)
    emb2 = StoreWriter(root / "emb2", 5, kind="embeddings", dtype="float32")  # a second embedder
    emb2.add(np.random.default_rng(2).normal(size=(n_images, 5)).astype(np.float32),
             np.arange(n_images))  # fmt: skip
    emb2.mark(n_images)
    emb2.close(images=paths, n_images=n_images)
    runner = CliRunner()
    for args in (
        ["score", "--activations", root / "acts", "--embeddings", root / "emb",
         "--sae", root / "sae", "--out", root / "scores"],
        ["label", "--sae", root / "sae", "--activations", root / "acts", "--out",
         root / "labels", "--clip", "toyworld", "--vocab", "toyworld"],
        ["explore", "--sae", root / "sae", "--activations", root / "acts", "--out",
         root / "site", "--scores", root / "scores", "--labels", root / "labels" / "labels.csv",
         "--embeddings", f"second={root / 'emb2'}", "--min-active", min_active, "--copy-images"],
    ):  # fmt: skip
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    return root


def build_emoji_site(root: Path, models: Path, n_images: int = 48, d_sae: int = 64) -> Path:
    """An exported emoji-world split, every token of block 1 of the emoji CLIP in
    ``models`` cached from it, a random SAE, its labels (the emoji world's vocabulary, read
    from the split's world.json) and its browser in ``root/site``; returns ``root``."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders.cache import CacheConfig, cache_activations
    from vlmsae.explore.build import build_site
    from vlmsae.explore.labels import label_sae
    from vlmsae.toyworld import export_imagefolder

    export_imagefolder(root / "world", split="test", n=n_images, world="emoji")
    cfg = CacheConfig(layers=(1,), tokens="all", dtype="float32", workers=0, progress=False)
    cache_activations(models / "clip", root / "world", root / "acts", cfg, split="test")
    acts = root / "acts" / "layer_1"
    make_sae(root / "sae", ActivationStore(acts).d, d_sae, k=8)
    label_sae(root / "sae", acts, root / "labels", clip=str(models / "clip"), vocab="toyworld")
    build_site(root / "sae", acts, root / "site", labels=root / "labels" / "labels.csv")
    return root
