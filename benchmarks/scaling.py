"""Scaling out: `vlmsae train` and `vlmsae cache` on 1 and 2 processes, and the efficiency.

Runs the real commands (``python -m vlmsae ...`` for one process, ``torchrun
--nproc-per-node 2 -m vlmsae ...`` for two; gloo on CPU, NCCL with ``--device cuda``) on a
temporary activation store and image folder, reads the throughput each run measures itself
(``summary.json``: examples/s of the training loop, images/s of caching; process start-up
is not counted) and prints

    parallel efficiency = throughput(2 processes) / (2 × throughput(1 process))

Every process is pinned to ``--threads`` threads, so 2 processes use twice the cores of 1:
an efficiency of 1.0 is perfect scaling. On a shared or small machine (fewer than
2 × threads free cores) the figure is a lower bound.

    python benchmarks/scaling.py [--rows 65536] [--d 256] [--expansion 8] [--k 16]
        [--batch-size 2048] [--steps 30] [--images 128] [--threads 1] [--device cpu]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOY_CLIP = Path(__file__).resolve().parents[1] / "src/vlmsae/toyworld/models/clip"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_vlmsae(args: list[str], n_proc: int, threads: int, timeout: float) -> float:
    """Run ``vlmsae ARGS`` on ``n_proc`` processes; return the wall seconds."""
    if n_proc == 1:
        cmd = [sys.executable, "-m", "vlmsae", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n_proc}",
            f"--master-port={_port()}", "-m", "vlmsae", *args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLMSAE_DIST_TIMEOUT": "300"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_train(root: Path, a: argparse.Namespace) -> dict:
    import vlmsae

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(a.rows, a.d)).astype(np.float32) @ rng.normal(size=(a.d, a.d)).astype(
        np.float32
    )
    vlmsae.ActivationStore.write(root / "acts", acts, meta={})
    out = {}
    for n_proc in (1, 2):
        run = root / f"train{n_proc}"
        run_vlmsae(
            [
                "train",
                "--activations",
                str(root / "acts"),
                "--out",
                str(run),
                "--expansion",
                str(a.expansion),
                "--k",
                str(a.k),
                "--steps",
                str(a.steps),
                "--batch-size",
                str(a.batch_size),
                "--warmup-steps",
                "5",
                "--threshold-start-step",
                "5",
                "--log-every",
                str(a.steps),
                "--checkpoint-every",
                str(a.steps),
                "--device",
                a.device,
            ],  # fmt: skip
            n_proc,
            a.threads,
            a.timeout,
        )
        out[n_proc] = json.loads((run / "summary.json").read_text())["examples_per_s"]
    return {"unit": "examples/s", **_efficiency(out)}


def bench_cache(root: Path, a: argparse.Namespace) -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "images" / "all"
    folder.mkdir(parents=True)
    for i in range(a.images):
        pixels = rng.integers(0, 255, size=(96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    out = {}
    for n_proc in (1, 2):
        store = root / f"cache{n_proc}"
        run_vlmsae(
            [
                "cache",
                "--model",
                str(a.model),
                "--data",
                str(root / "images"),
                "--out",
                str(store),
                "--layer",
                "-1",
                "--tokens",
                "all",
                "--batch-size",
                "16",
                "--workers",
                "0",
                "--device",
                a.device,
                "--dtype",
                "float32",
            ],  # fmt: skip
            n_proc,
            a.threads,
            a.timeout,
        )
        out[n_proc] = json.loads((store / "summary.json").read_text())["images_per_s"]
    return {"unit": "images/s", **_efficiency(out)}


def _efficiency(rate: dict[int, float]) -> dict:
    return {
        "one_process": rate[1],
        "two_processes": rate[2],
        "speedup": rate[2] / rate[1],
        "efficiency": rate[2] / (2 * rate[1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--model", type=Path, default=TOY_CLIP, help="Model folder for caching.")
    p.add_argument("--threads", type=int, default=1, help="Threads per process.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--skip-cache", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    results = {"threads_per_process": a.threads, "device": a.device, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["train"] = bench_train(root, a)
        if not a.skip_cache:
            results["cache"] = bench_cache(root, a)
    for name in ("train", "cache"):
        if name in results:
            r = results[name]
            print(
                f"{name:6s} 1 process {r['one_process']:10.1f} {r['unit']}   2 processes "
                f"{r['two_processes']:10.1f}   speed-up {r['speedup']:.2f}×   "
                f"efficiency {r['efficiency']:.2f}"
            )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
