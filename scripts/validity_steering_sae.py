"""Validity measurement behind the demo's steering SAE (``docs/fidelity.md``).

Steering through one neuron can only work where a neuron stands for the target. Before
reading any steering rate, this measures, for the SAE widths and training-set sizes the
demo could use, how well the neuron the demo would choose for each target emoji (highest
top-16 label purity on the training images) detects that emoji on *held-out* images: the
purity of its 16 top held-out images and its best-threshold F1, plus the SAE's held-out R².
Three seeds (each seed draws other targets, another SAE initialisation and other images).

    python scripts/validity_steering_sae.py --out validity-steering.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vlmsae.metrics.recon import r2
from vlmsae.steer.llava import load_llava
from vlmsae.steer.neurons import block_outputs, choose_concept_neurons, image_codes
from vlmsae.steer.toy import ToySteeringConfig, train_toy_sae
from vlmsae.steer.toy_tasks import find_records, steering_targets, train_set
from vlmsae.toyworld import llava_path
from vlmsae.toyworld.worlds import get_world


def best_f1(score_N: np.ndarray, truth_N: np.ndarray) -> float:
    """The best F1 of ``score >= t`` over every threshold ``t`` (cuts only between distinct
    scores: tied images are predicted together)."""
    order = np.argsort(-score_N, kind="stable")
    ranked = score_N[order]
    hits = np.cumsum(truth_N[order])
    predicted = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (predicted + truth_N.sum())
    cut = np.r_[ranked[1:] != ranked[:-1], True]  # the last image of each run of ties
    return float(f1[cut].max()) if truth_N.any() else float("nan")


def held_out(world, targets, n_images: int, n_per_target: int, seed: int):
    """``val`` images: the first ``n_images`` plus ``n_per_target`` per target (main emoji)."""
    records = list(world.iter_world("val", n_images, seed))
    have = {r.index for r in records}
    for t in targets:
        for r in find_records(world, "val", n_per_target, lambda r, t=t: r.emoji == t, seed):
            if r.index not in have:
                records.append(r)
                have.add(r.index)
    labels = np.array([r.emoji for r in records])
    return [world.render(r, seed) for r in records], labels


def measure(llava, world, expansion: int, n_train: int, seed: int, steps: int) -> dict:
    cfg = ToySteeringConfig(
        world=world.name, expansion=expansion, n_train=n_train, steps=steps, seed=seed
    )
    layer = max(llava.encoder.read_layers)
    targets = steering_targets(world, cfg.n_targets, seed)
    images, labels = train_set(world, n_train, targets, cfg.n_per_target, seed)
    t0 = time.perf_counter()
    sae = train_toy_sae(llava, images, layer, cfg)
    seconds = time.perf_counter() - t0
    codes_NS = image_codes(llava, sae, images, layer)
    neurons = choose_concept_neurons(codes_NS, np.asarray(labels), targets, top_n=16)
    val_images, val_labels = held_out(world, targets, 1024, 32, seed)
    val_NS = image_codes(llava, sae, val_images, layer)
    purity, f1 = [], []
    for t, n in neurons.items():
        top = np.argsort(-val_NS[:, n.neuron], kind="stable")[:16]
        purity.append(float((val_labels[top] == t).mean()))
        f1.append(best_f1(val_NS[:, n.neuron], val_labels == t))
    with torch.inference_mode():
        h = torch.cat([b.flatten(0, 1) for b in block_outputs(llava, val_images[:256], layer)])
        rec = r2(h, sae.decode(sae.encode(h)))
    return {
        "expansion": expansion,
        "n_train": n_train,
        "seed": seed,
        "train_purity": float(np.mean([n.purity for n in neurons.values()])),
        "heldout_purity": float(np.mean(purity)),
        "heldout_f1": float(np.mean(f1)),
        "targets_f1_above_0.5": float(np.mean(np.array(f1) >= 0.5)),
        "r2": float(rec),
        "train_seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="validity-steering.json")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--expansions", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--n-train", type=int, nargs="+", default=[512, 1024, 2048])
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = get_world("emoji")
    llava = load_llava(llava_path(None, world=world.name))
    grid = [(e, 1024) for e in args.expansions] + [(8, n) for n in args.n_train if n != 1024]
    rows = []
    for expansion, n_train in grid:
        for seed in range(args.seeds):
            row = measure(llava, world, expansion, n_train, seed, args.steps)
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
