"""Benchmark of the Monosemanticity Score and top-k images (CPU, threads pinned).

1. Fast MS against a vectorised O(N²·K) implementation of the pairwise definition at
   sizes where that finishes: speed ratio and max absolute difference.
2. Fast MS alone: N = 50,000 images × K = 65,536 sparse neurons (20 active per image) and
   N = 50,000 × K = 1,024 dense raw neurons; embeddings E = 768 (DINOv2-base).
3. Top-16 images for the sparse case.

Usage: python benchmarks/ms.py [--quick] [--json PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _pin(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def pairwise_reference(acts_NK, emb_NE):
    """The definition, vectorised over pairs: O(N²·K) time, O(N²) memory."""
    import numpy as np

    a = np.asarray(acts_NK, np.float64)
    lo, hi = a.min(0), a.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    t = (a - lo) / span
    e = emb_NE / np.linalg.norm(emb_NE, axis=1, keepdims=True)
    s = e @ e.T
    iu = np.triu_indices(len(a), 1)
    s_pairs = s[iu]
    out = np.empty(a.shape[1])
    for k in range(a.shape[1]):  # one neuron at a time keeps memory at O(N²)
        w = t[iu[0], k] * t[iu[1], k]
        den = w.sum()
        out[k] = (w @ s_pairs) / den if den > 0 and hi[k] > lo[k] else np.nan
    return out


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _sparse_codes(rng, n, k, active):
    import numpy as np
    import scipy.sparse as sp

    cols = np.stack([rng.choice(k, active, replace=False) for _ in range(n)]) if n < 2000 else (
        rng.integers(0, k, size=(n, active))
    )  # fmt: skip
    vals = rng.exponential(size=(n, active)).astype(np.float32)
    m = sp.csr_matrix((vals.ravel(), (np.repeat(np.arange(n), active), cols.ravel())), (n, k))
    m.sum_duplicates()
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    _pin(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vlmsae.metrics import monosemanticity_score
    from vlmsae.metrics.top_images import top_images

    rng = np.random.default_rng(0)
    res: dict = {"threads": args.threads, "quick": args.quick, "reference": []}
    ref_sizes = [(300, 64, 32)] if args.quick else [(500, 256, 64), (2000, 256, 64)]
    for n, k, e in ref_sizes:
        acts = rng.normal(size=(n, k)) + 2
        emb = rng.normal(size=(n, e))
        ref, t_ref = _timed(lambda acts=acts, emb=emb: pairwise_reference(acts, emb))
        fast, t_fast = _timed(lambda acts=acts, emb=emb: monosemanticity_score(acts, emb))
        diff = float(np.nanmax(np.abs(ref - fast)))
        row = {"n": n, "k": k, "e": e, "reference_s": t_ref, "fast_s": t_fast,
               "speedup": t_ref / t_fast, "max_abs_diff": diff}  # fmt: skip
        res["reference"].append(row)
        print(f"N={n:>6} K={k:>5} E={e}: reference {t_ref:.3f}s, fast {t_fast:.4f}s "
              f"(×{row['speedup']:.0f}), max |diff| {row['max_abs_diff']:.2e}")  # fmt: skip
    n, e = (5_000, 128) if args.quick else (50_000, 768)
    k_sparse, k_dense = (8_192, 256) if args.quick else (65_536, 1_024)
    emb = rng.normal(size=(n, e)).astype(np.float32)
    codes = _sparse_codes(rng, n, k_sparse, 20)
    _, t = _timed(lambda: monosemanticity_score(codes, emb, chunk_rows=n))
    res["sparse"] = {"n": n, "k": k_sparse, "e": e, "active": 20, "seconds": t, "target_s": 1.0}
    print(f"sparse MS N={n} K={k_sparse} (20 active) E={e}: {t:.2f}s (target ≤ 1 s)")
    dense = (rng.normal(size=(n, k_dense)) + 1).astype(np.float32)
    _, t = _timed(lambda: monosemanticity_score(dense, emb))
    res["dense"] = {"n": n, "k": k_dense, "e": e, "seconds": t, "target_s": 5.0}
    print(f"dense MS  N={n} K={k_dense} E={e}: {t:.2f}s (target ≤ 5 s)")
    _, t = _timed(lambda: top_images(codes, 16))
    res["top16"] = {"n": n, "k": k_sparse, "seconds": t, "target_s": 10.0}
    print(f"top-16 images, sparse N={n} K={k_sparse}: {t:.2f}s (target ≤ 10 s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
