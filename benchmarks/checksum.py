"""Benchmark of the store checksum (CPU, threads pinned): the cost of checking a shard
against the cost of the first real pass over it, per hash.

A shard of 65,536 rows × 768 (the writer's default shard size at CLIP ViT-B width) is
written as float16 (the default of ``vlmsae cache``) and as float32. For each, the time to
read it into a float32 array (``np.load(mmap_mode="r")`` then a float32 copy, as the store
reader does) is compared with the time to hash the file (through a memory map, as
``vlmsae.core.checksum.file_checksum`` does) with SHA-256, BLAKE2b and XXH3-128:

- warm: the file is in the page cache for both (pure CPU cost; the conservative figure);
- cold: the page cache is dropped for the file first (``posix_fadvise(DONTNEED)``), the
  hash reads it from disk, then the read finds it cached: the figure is the time the check
  adds to a first pass, (hash + read after it) − read alone, over read alone.

Each figure is the median of ``--repeats`` runs. Usage:
python benchmarks/checksum.py [--quick] [--json PATH] [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import tempfile
import time
from pathlib import Path


def _pin(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _hash_file(path: Path, factory) -> str:
    h = factory()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        h.update(m)
    return h.hexdigest()


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _median(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small shard (a smoke run)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    _pin(args.threads)
    import hashlib

    import numpy as np
    import xxhash

    hashes = {"sha256": hashlib.sha256, "blake2b": hashlib.blake2b, "xxh3_128": xxhash.xxh3_128}
    rows, d = (4096, 768) if args.quick else (65_536, 768)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float16", "float32"):
            path = Path(tmp) / f"shard-{dtype}.npy"
            arr = np.random.default_rng(0).standard_normal((rows, d), np.float32)
            np.save(path, arr.astype(dtype))
            del arr

            def read(path=path):
                return np.array(np.load(path, mmap_mode="r"), dtype=np.float32, copy=True)

            drop = lambda path=path: _drop_cache(path)  # noqa: E731
            read(), _hash_file(path, xxhash.xxh3_128)  # page cache and code warm
            read_warm = _median(read, args.repeats)
            read_cold = _median(read, args.repeats, before=drop)
            mib = path.stat().st_size / 2**20
            print(f"{dtype} shard {rows:,} × {d} ({mib:.0f} MiB): read into float32 "
                  f"{read_warm * 1e3:.1f} ms warm, {read_cold * 1e3:.1f} ms cold")  # fmt: skip
            for name, factory in hashes.items():
                hash_warm = _median(lambda f=factory, p=path: _hash_file(p, f), args.repeats)
                both = _median(
                    lambda f=factory, p=path: (_hash_file(p, f), read()), args.repeats, drop
                )
                warm, cold = hash_warm / read_warm, (both - read_cold) / read_cold
                figures[f"{dtype}.{name}"] = {"warm": warm, "cold": cold}
                print(f"  {name:>9}: hash / read = {warm:5.3f} warm, {cold:6.3f} cold")
    print("budget: ≤ 0.10 (the check may cost at most 10 % of the first pass)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
