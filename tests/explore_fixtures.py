"""A tiny SAE over a token store of real image files, for the browser tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 4
"""Patches per image side: every image has a CLS token and SIDE² patch tokens."""


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
    from vlmsae.data.writer import StoreWriter

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
