"""Throughput of one SAE training step: vlmsae's sparse step against a dense one.

For D=768, ×16 (S=12288), k=20, batch 4096, BatchTopK and Matryoshka BatchTopK, in
float32 and bfloat16 autocast, prints examples/s of a full training step (forward, loss,
backward, decoder-parallel gradient removal, clipping, Adam, decoder renormalisation) and
two ratios measured in the same run:

- ``vs dense``: against a plain dense implementation of the same step, written below
  (dense codes, dense decoder product, autograd through everything);
- ``vs floor``: against one dense encoder product ``x @ W_enc`` of the same shape, which
  every step must pay (1.0 would be a step that costs nothing else).

    python benchmarks/sae_step.py [--quick] [--threads N] [--device cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from vlmsae.sae import SAE, SAEConfig
from vlmsae.train import TrainConfig
from vlmsae.train.state import TrainState
from vlmsae.train.step import make_optimizer, train_step


def dense_step(sae: SAE, opt: torch.optim.Optimizer, x_BD: Tensor, cfg: TrainConfig) -> Tensor:
    """The textbook step: dense codes [B, S], dense decoder products, plain autograd."""
    with torch.autocast(x_BD.device.type, torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
        pre_BS = torch.relu((x_BD - sae.b_dec) @ sae.W_enc + sae.b_enc)
        k_total = sae.cfg.k * x_BD.shape[0]
        top = pre_BS.flatten().topk(k_total, sorted=False)
        codes_BS = torch.zeros_like(pre_BS).flatten().scatter(0, top.indices, top.values)
        codes_BS = codes_BS.view_as(pre_BS)
        x_hat_BD, losses, lo = sae.b_dec, [], 0
        for hi in sae.cfg.group_ends:
            x_hat_BD = x_hat_BD + codes_BS[:, lo:hi] @ sae.W_dec[lo:hi]
            losses.append((x_BD - x_hat_BD).float().pow(2).sum(-1).mean())
            lo = hi
        loss = torch.stack(losses).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_grad_()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    opt.step()
    sae.normalize_decoder_()
    return loss


def timed(fn, device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed runs of ``fn()`` after one warm-up run (the minimum is
    the estimate least disturbed by other processes on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_case(
    arch: str,
    dtype: str,
    d: int,
    expansion: int,
    k: int,
    batch: int,
    device: torch.device,
    repeats: int,
) -> dict:
    groups = (0.0625, 0.125, 0.25, 0.5625) if arch == "matryoshka" else None
    sae_cfg = SAEConfig(
        d_in=d, expansion=expansion, sparsity="batchtopk", k=k, group_fractions=groups
    )
    cfg = TrainConfig(
        sae=sae_cfg, steps=10**6, batch_size=batch, dtype=dtype, device=str(device), progress=False
    )
    x_BD = torch.randn(batch, d, device=device)
    ours = SAE(sae_cfg).to(device)
    opt = make_optimizer(ours, cfg)
    state = TrainState(0, torch.zeros(ours.cfg.d_sae, dtype=torch.int64, device=device))
    t_ours = timed(lambda: train_step(ours, opt, x_BD, state, cfg), device, repeats)
    dense = SAE(sae_cfg).to(device)
    opt_dense = make_optimizer(dense, cfg)  # the same (fused) Adam: only the step differs
    t_dense = timed(lambda: dense_step(dense, opt_dense, x_BD, cfg), device, repeats)
    W_enc = ours.W_enc.detach()  # noqa: N806

    def floor():
        with (
            torch.no_grad(),
            torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bfloat16"),
        ):
            return x_BD @ W_enc

    t_floor = timed(floor, device, repeats)
    return {
        "arch": arch,
        "dtype": dtype,
        "d_in": d,
        "d_sae": sae_cfg.d_sae,
        "k": k,
        "batch": batch,
        "examples_per_s": batch / t_ours,
        "dense_examples_per_s": batch / t_dense,
        "floor_examples_per_s": batch / t_floor,
        "speedup_vs_dense": t_dense / t_ours,
        "slowdown_vs_floor": t_ours / t_floor,
        "seconds": {"ours": t_ours, "dense": t_dense, "floor": t_floor},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D=128, ×16, batch 1024")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    d, batch = (128, 1024) if args.quick else (768, 4096)
    rows = []
    print(f"device {device}, threads {args.threads}, D={d}, ×16, k=20, batch {batch}")
    print(
        f"{'arch':<11}{'dtype':<10}{'examples/s':>12}{'dense ex/s':>12}"
        f"{'vs dense':>10}{'vs floor':>10}"
    )
    for arch in ("batchtopk", "matryoshka"):
        for dtype in ("float32", "bfloat16"):
            r = bench_case(arch, dtype, d, 16, 20, batch, device, args.repeats)
            rows.append(r)
            print(
                f"{arch:<11}{dtype:<10}{r['examples_per_s']:>12,.0f}"
                f"{r['dense_examples_per_s']:>12,.0f}{r['speedup_vs_dense']:>9.2f}×"
                f"{r['slowdown_vs_floor']:>9.2f}×",
                flush=True,
            )
    print(
        "vs dense: how many times faster than the dense step (target ≥ 3 in fp32); "
        "vs floor: step time / one encoder matmul of the same dtype (target ≤ 1.5)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"device": str(device), "threads": args.threads, "results": rows}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
