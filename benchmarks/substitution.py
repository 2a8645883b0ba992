"""Cost of substitution (`evaluate_substitution`) against one plain embedding pass.

A randomly initialised CLIP vision tower of ViT-B/16 width (768, 12 heads, MLP 3072, 224 px,
197 tokens) with ``--layers`` blocks embeds PNG files in a temporary folder; a TopK SAE
(expansion 8, k 32) is substituted at block ``layers - 2`` with ``--tokens``. Figures,
measured in one run with torch pinned to ``--threads`` threads:

- plain: one pass of decoding + ``Encoder.embed`` over the images (images/s);
- substitution: ``run_substitution`` over the same images: the dataset-mean pass (up to the
  hooked block, a fraction ``f = (layer + 1) / layers`` of a forward) and 5 forwards per batch
  (original, SAE, zero, mean, identity), with ``replay`` (the 4 variants after the original
  reuse its blocks up to the hook: ``1 + f + 4 (1 - f)`` forwards) and without (``5 + f``);
- each ratio to plain next to its floor in forwards: what is above the floor is decoding
  twice, the SAE, the hook and the metrics (k-NN, cosine).

    python benchmarks/substitution.py [--images 32] [--batch-size 16] [--layers 4]
                                      [--tokens all] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmsae.data.images import load_dataset
from vlmsae.encoders import Encoder
from vlmsae.encoders.loader import image_batches
from vlmsae.evaluate.substitution import run_substitution
from vlmsae.sae import SAE, SAEConfig


def make_encoder(n_layers: int) -> Encoder:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=n_layers,
        image_size=224,
        patch_size=16,
        projection_dim=512,
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    model = CLIPVisionModelWithProjection(config).eval()
    return Encoder(model, processor, name="clip-b16-random")


def write_images(folder: Path, n: int) -> None:
    """PNGs of two classes (two colour casts of random fields, 256 x 320)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        px = rng.integers(0, 128, (256, 320, 3), dtype=np.uint8)
        px[..., 2 * (i % 2)] += 127
        (folder / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(px).save(folder / f"c{i % 2}" / f"{i:04d}.png")


def plain_pass(encoder: Encoder, paths: list[str], batch_size: int) -> float:
    """Seconds of one decode + embed pass."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in image_batches(paths, encoder.processor, batch_size=batch_size):
            encoder.embed(batch.pixel_values)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    encoder = make_encoder(args.layers)
    layer = args.layers - 2
    cfg = SAEConfig(d_in=768, expansion=8, sparsity="topk", k=32, hookpoint="post_mlp_residual",
                    layer=layer, tokens=args.tokens)  # fmt: skip
    sae = SAE(cfg, generator=torch.Generator().manual_seed(0)).eval()
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.images)
        dataset = load_dataset(tmp)
        plain_pass(encoder, list(dataset.paths[: args.batch_size]), args.batch_size)  # warm-up
        seconds["plain"] = plain_pass(encoder, list(dataset.paths), args.batch_size)
        for replay in (True, False):
            start = time.perf_counter()
            result = run_substitution(sae, encoder, dataset, batch_size=args.batch_size,
                                      replay=replay)  # fmt: skip
            seconds["replay" if replay else "full"] = time.perf_counter() - start
    f = (layer + 1) / args.layers
    figures = {
        "images": args.images,
        "threads": args.threads,
        "layer": f"{layer} of {args.layers}",
        "tokens": args.tokens,
        "plain_images_per_s": args.images / seconds["plain"],
        "replay_images_per_s": args.images / seconds["replay"],
        "ratio_replay_to_plain": seconds["replay"] / seconds["plain"],
        "floor_replay_forwards": 1 + f + 4 * (1 - f),
        "ratio_full_to_plain": seconds["full"] / seconds["plain"],
        "floor_full_forwards": 5 + f,
        "speedup_of_replay": seconds["full"] / seconds["replay"],
        "cosine_recovered_vs_zero": result.recovered["cosine"]["zero"],
    }
    for key, value in figures.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
