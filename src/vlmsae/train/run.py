"""Training an SAE: ``train_sae(data, TrainConfig(...), out_dir=...)``.

The recipe is the paper's (its scripts through the dictionary_learning trainers): inputs
scaled to unit mean squared norm (the scale folded back into the saved weights), Adam at lr
``2e-4/sqrt(d_sae/2^14)`` with the warm-up ``lr·s/W`` and no decay, gradient clipping,
unit-norm decoder rows with the decoder-parallel gradient removed, ``W_enc = W_decᵀ`` and
``b_dec`` = geometric median of the first batch at initialisation, AuxK (α 0.03) on the
latents dead after this batch, Matryoshka prefix losses weighted ``Σ_g L_g / G²``, and an
EMA inference threshold for BatchTopK. ``docs/fidelity.md`` lists every detail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae.core import dist
from vlmsae.core.errors import NonFiniteError
from vlmsae.core.io import read_json, remove_stale_temps, write_json
from vlmsae.core.lock import output_lock
from vlmsae.core.progress import tqdm
from vlmsae.sae import checkpoint as ckpt
from vlmsae.sae.model import SAE, SAEOutput
from vlmsae.train.config import TrainConfig, lr_factor
from vlmsae.train.data import Data, estimate_norm_factor, make_source, shard_source
from vlmsae.train.losses import (
    LossOutput,
    global_reconstruction_metrics,
    reconstruction_metrics,
    sae_loss,
)
from vlmsae.train.optim import LayoutAdam
from vlmsae.train.state import MetricsLog, evaluate_sae, load_resume_state, save_training_checkpoint

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run must restore."""

    step: int
    """Completed optimizer steps (= batches consumed)."""
    examples_since_fired_S: Tensor
    """int64 [S]: training examples since each latent last fired (dead-latent detection)."""
    last_checkpoint: int | None = None
    """Step of the last checkpoint written, if any."""
    norm_factor: float = 1.0
    """The training data is divided by this (1 without ``normalize_activations``)."""


@torch.no_grad()
def geometric_median(points_ND: Tensor, n_iter: int = 100, tol: float = 1e-5) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to ``points_ND``."""
    guess_D = points_ND.mean(0)
    for _ in range(n_iter):
        prev_D = guess_D
        weights_N = 1.0 / (points_ND - guess_D).norm(dim=1).clamp_min(1e-8)
        guess_D = (weights_N[:, None] * points_ND).sum(0) / weights_N.sum()
        if (guess_D - prev_D).norm() < tol * (1.0 + prev_D.norm()):
            break
    return guess_D


def train_step(
    sae: SAE, optimizer: torch.optim.Optimizer, x_BD: Tensor, state: TrainState, cfg: TrainConfig
) -> tuple[LossOutput, SAEOutput]:
    """One optimizer step, in the order that keeps the decoder on the unit sphere.

    Data parallel (several ranks, see :mod:`vlmsae.core.dist`): ``x_BD`` is this rank's slice of
    the global batch; selection, dead counters, AuxK's variance and the threshold are taken
    over the global batch, and the summed gradients equal one process's. The returned
    ``loss.total`` is the global loss."""
    share, n_global = dist.batch_share(x_BD.shape[0])  # (1.0, B) in one process
    with torch.autocast(x_BD.device.type, torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
        out = sae(x_BD, return_codes=False, reuse_buffers=True)  # forward (k·B over the batch)
        _record_firing(sae, out, state, n_global)  # first: a latent firing here is not dead
        dead_S = state.examples_since_fired_S >= cfg.dead_after
        loss = sae_loss(sae, x_BD, out, dead_S, cfg, reuse_buffers=True)  # loss
    total = loss.total if share == 1.0 else loss.total * share  # this rank's part of the mean
    global_total = dist.all_reduce(total.detach().clone())  # every rank sees the same loss
    if not torch.isfinite(global_total):
        raise NonFiniteError(f"the loss is {float(global_total)}")
    sae.recycle_grads_()  # zero_grad; the backward writes into last step's weight gradients
    optimizer.zero_grad(set_to_none=True)
    total.backward()  # backward
    dist.all_reduce_tensors(p.grad for p in sae.parameters() if p.grad is not None)
    sae.remove_parallel_grad_()  # remove decoder-parallel gradient
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)  # clip
    optimizer.step()  # step
    sae.normalize_decoder_()  # renormalise decoder
    for group in optimizer.param_groups:  # schedule: the lr of the next step
        group["lr"] = cfg.learning_rate * lr_factor(state.step + 1, cfg)
    _update_threshold(sae, out, state, cfg)
    state.step += 1
    return loss._replace(total=global_total), out


@torch.no_grad()
def _record_firing(sae: SAE, out: SAEOutput, state: TrainState, n_global: int) -> None:
    """Dead-latent counters: examples (of the global batch) since each latent last had a
    positive code."""
    n = out.pre_acts.shape[0]
    if out.active is not None:
        fired_S = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=out.pre_acts.device)
        fired_S[out.active.cols[out.active.values > 0]] = True
    else:
        fired_S = (out.codes.reshape(n, -1) != 0).any(0)
    if dist.is_distributed():  # fired on any rank
        fired_S = dist.all_reduce(fired_S.to(torch.int32), "max").bool()
    state.examples_since_fired_S += n_global
    state.examples_since_fired_S[fired_S] = 0


@torch.no_grad()
def _update_threshold(sae: SAE, out: SAEOutput, state: TrainState, cfg: TrainConfig) -> None:
    """The BatchTopK inference threshold: an EMA of the smallest code kept in the batch, so
    that thresholding at inference keeps ~k per example; updated at the steps after
    ``threshold_start_step`` (0-based ``state.step`` is this step's index)."""
    if sae.cfg.sparsity == "batchtopk" and state.step > cfg.threshold_start_step:
        values = out.active.values
        positive = values[values > 0]
        inf = values.new_tensor(math.inf, dtype=torch.float32)
        smallest = dist.all_reduce(positive.min().float() if positive.numel() else inf, "min")
        if torch.isfinite(smallest):  # the smallest kept code of the global batch
            if sae.threshold < 0:  # first update: no EMA history yet
                sae.threshold.copy_(smallest)
            else:
                sae.threshold.mul_(cfg.threshold_beta).add_((1 - cfg.threshold_beta) * smallest)


def make_optimizer(sae: SAE, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam at the lr of step 0; the fused kernel (one pass per tensor) where available,
    walking the transposed ``W_enc`` in its memory order (:class:`LayoutAdam`)."""
    lr = cfg.learning_rate * lr_factor(0, cfg)
    try:
        return LayoutAdam(sae.parameters(), lr=lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return LayoutAdam(sae.parameters(), lr=lr, betas=cfg.adam_betas)


def _init_b_dec(sae: SAE, x_BD: Tensor) -> None:
    with torch.no_grad():  # of the global batch: every rank's slice, in rank order
        sae.b_dec.copy_(geometric_median(dist.all_gather_rows(x_BD).float()))


def train_sae(
    data: Data,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    val: Data | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> SAE:
    """Train an SAE on ``data`` and return it (in eval mode, applying to raw activations:
    with ``cfg.normalize_activations`` it trains on ``x / norm_factor`` and folds the
    factor back into its biases and thresholds at the end).

    Args:
        data: a Tensor / array ``[N, d_in]``, an activation-store directory or
            :class:`~vlmsae.data.store.ActivationStore`, or an iterable of ``[B, d_in]``
            batches (resuming an iterable replays it from the start and skips).
        cfg: the training configuration (holds the SAE configuration).
        out_dir: where ``config.json``, ``sae.safetensors``, the trainer state,
            ``metrics.jsonl`` and ``summary.json`` go; ``None`` keeps everything in memory.
        val: held-out data (same kinds as ``data``) evaluated at every log point.
        resume: continue the run in ``out_dir`` exactly where its last checkpoint left it
            (``cfg.steps`` may be larger than the run's: it is extended).
        on_step: called as ``on_step(step, metrics)`` after every step (``metrics`` is
            filled at log points only).

    Under ``torchrun`` (``WORLD_SIZE > 1``) training is data parallel: every rank calls
    this with the same data and config, reads its slice of each global batch of
    ``cfg.batch_size`` rows, and ends with the weights one process would; rank 0 locks
    ``out_dir`` and writes it (see :mod:`vlmsae.core.dist`).

    Raises:
        NonFiniteError: a batch or the loss holds NaN / Inf; the message names the step,
            and the last checkpoint in ``out_dir`` is left untouched.
    """
    dist.init_from_env()  # under torchrun: data parallel over the ranks
    source = shard_source(make_source(data))
    cfg = _check_width(cfg, source)
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is None:
        return _train(source, cfg, None, val, resume, on_step)
    lock = lambda: output_lock(out_path, "vlmsae train")  # noqa: E731
    with dist.on_main(lock, f"locking {out_path}"):  # one writer per run directory: rank 0
        if dist.is_main():
            remove_stale_temps(out_path)  # debris of a killed writer (we hold the lock)
        sae = _train(source, cfg, out_path, val, resume, on_step)
        dist.barrier()  # rank 0's files are complete when train_sae returns on any rank
        return sae


@dataclass
class _Run:
    """One SAE in training: what each step needs besides the batch."""

    sae: SAE
    optimizer: torch.optim.Optimizer
    state: TrainState
    cfg: TrainConfig
    source: Any
    out_path: Path | None
    val_x: Tensor | None
    metrics_log: MetricsLog | None
    on_step: Callable[[int, dict[str, Any]], None] | None
    bar: Any = None
    t0: float = 0.0
    start_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def _train(source, cfg, out_path, val, resume, on_step) -> SAE:
    run = _prepare(source, cfg, out_path, val, resume, on_step)
    batches = source.batches(cfg.batch_size, cfg.seed, run.state.step)
    try:
        while run.state.step < cfg.steps:
            x_BD = next(batches, None)
            if x_BD is None:
                log.warning("the data ran out after %d steps (of %d)", run.state.step, cfg.steps)
                break
            _advance(run, x_BD)
    finally:
        run.bar.close()
    return _conclude(run)


def _prepare(source, cfg, out_path, val, resume, on_step, norm_factors=None, bar=True) -> _Run:
    """Build (or restore) an SAE, its optimizer and state; ``norm_factors`` caches the input
    scale by ``(batch_size, seed, norm_batches)`` across the runs of a sweep."""
    device = torch.device(cfg.device)
    sae = SAE(cfg.sae, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    sae.global_batch = dist.is_distributed()  # BatchTopK over every rank's slice
    optimizer = make_optimizer(sae, cfg)
    state = TrainState(0, torch.zeros(cfg.sae.d_sae, dtype=torch.int64, device=device))
    if resume:
        if out_path is None:
            raise ValueError("resume=True needs the out_dir of the interrupted run")
        load_resume_state(out_path, sae, optimizer, state, cfg, source, publish=dist.is_main())
    elif out_path is not None and ckpt.has_trainer_state(out_path):
        raise FileExistsError(
            f"{out_path} already holds a training run; pass --resume to continue it or "
            "choose another --out"
        )
    if source.n_rows is not None and cfg.batch_size > source.n_rows:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {source.n_rows} rows of data")
    if cfg.batch_size < dist.world_size():
        raise ValueError(
            f"batch_size {cfg.batch_size} is smaller than the {dist.world_size()} ranks; give "
            "every rank at least one row of each batch"
        )
    val_x = None
    if val is not None and dist.is_main():  # rank 0 evaluates and logs
        from vlmsae.train.data import load_rows

        val_x = load_rows(val, cfg.val_rows).to(device)
        if val_x.shape[1] != cfg.sae.d_in:
            raise ValueError(f"validation rows have width {val_x.shape[1]}, d_in is {cfg.sae.d_in}")
    _warn_schedule(cfg, state.step)
    if cfg.normalize_activations and not resume:
        norm_factors = {} if norm_factors is None else norm_factors
        key = (cfg.batch_size, cfg.seed, cfg.norm_batches)
        if key not in norm_factors:
            norm_factors[key] = estimate_norm_factor(source, *key)  # read once per sweep
        state.norm_factor = norm_factors[key]
        log.info("inputs are divided by %.6g (unit mean squared norm)", state.norm_factor)
    if val_x is not None and cfg.normalize_activations:
        val_x = val_x / state.norm_factor  # metrics in training units (R², L0 are scale-free)
    writes = out_path is not None and dist.is_main()
    metrics_log = MetricsLog(out_path, state.step) if writes else None
    run = _Run(sae, optimizer, state, cfg, source, out_path, val_x, metrics_log, on_step)
    run.t0, run.start_step = time.perf_counter(), state.step
    run.bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        disable=not (bar and cfg.progress and dist.is_main()),
        desc="train sae",
        unit="step",
    )
    return run


def _conclude(run: _Run) -> SAE:
    """Last checkpoint and summary; the returned SAE applies to raw inputs."""
    sae, cfg, state = run.sae, run.cfg, run.state
    _finish(
        sae,
        run.optimizer,
        state,
        cfg,
        run.source,
        run.out_path,
        run.val_x,
        run.metrics,
        run.t0,
        run.start_step,
    )
    sae.release_buffers_()  # the step's kept buffers: not the returned SAE's to hold
    if cfg.normalize_activations:
        sae.scale_biases_(state.norm_factor)  # fold: the returned SAE applies to raw inputs
    return sae.eval()


def _warn_schedule(cfg: TrainConfig, start_step: int) -> None:
    """Say up front when a short run cannot follow its schedule."""
    if cfg.warmup_steps >= cfg.steps:
        log.warning(
            "warmup_steps=%d >= steps=%d: the lr never reaches its base value; lower "
            "--warmup-steps",
            cfg.warmup_steps,
            cfg.steps,
        )
    if cfg.sae.sparsity == "batchtopk" and cfg.threshold_start_step >= cfg.steps - 1:
        log.warning(
            "threshold_start_step=%d >= steps - 1: the BatchTopK inference threshold will never "
            "be set and the SAE will encode with per-example top-k; lower "
            "--threshold-start-step",
            cfg.threshold_start_step,
        )


def _check_width(cfg: TrainConfig, source: Any) -> TrainConfig:
    if source.d is not None and source.d != cfg.sae.d_in:
        raise ValueError(
            f"the data ({source.description}) has width {source.d} but the SAE config has "
            f"d_in={cfg.sae.d_in}; set d_in={source.d}"
        )
    meta = {k: v for k, v in source.meta.items() if getattr(cfg.sae, k) is None}
    return replace(cfg, sae=replace(cfg.sae, **meta)) if meta else cfg


def _advance(run: _Run, x_BD: Tensor) -> None:
    """Train ``run`` on one batch: check, normalise, step, log, checkpoint."""
    sae, state, cfg, out_path = run.sae, run.state, run.cfg, run.out_path
    step_no = state.step + 1
    device = next(sae.parameters()).device
    x_BD = _check_batch(x_BD, cfg, state, step_no, out_path).to(device)
    if cfg.normalize_activations:
        x_BD = x_BD / state.norm_factor  # unit mean squared norm
    if state.step == 0:
        _init_b_dec(sae, x_BD)  # b_dec starts at the geometric median of batch 1
    try:
        loss, out = train_step(sae, run.optimizer, x_BD, state, cfg)
    except NonFiniteError as e:
        raise NonFiniteError(_stop_message(f"{e} at step {step_no}", state, out_path)) from None
    run.metrics = metrics = {}
    if state.step % cfg.log_every == 0 or state.step == cfg.steps:
        run.metrics = metrics = _log_point(
            sae, x_BD, loss, out, state, cfg, run.val_x, run.t0, run.start_step
        )
        run.bar.set_postfix(
            loss=f"{metrics['loss']:.4g}", l0=f"{metrics['l0']:.1f}", r2=f"{metrics['r2']:.3f}"
        )
        if run.metrics_log is not None:
            run.metrics_log.append(metrics)
    if out_path is not None and (state.step % cfg.checkpoint_every == 0):
        _checkpoint(out_path, sae, run.optimizer, state, cfg, run.source)
    run.bar.update(1)
    if run.on_step is not None:
        run.on_step(state.step, metrics)


def _checkpoint(out_path, sae, optimizer, state, cfg, source) -> None:
    """Rank 0 writes the checkpoint (every rank holds the same state)."""
    if dist.is_main():
        save_training_checkpoint(out_path, sae, optimizer, state, cfg, source)
    state.last_checkpoint = state.step


def _check_batch(
    x_BD: Tensor, cfg: TrainConfig, state: TrainState, step_no: int, out_path: Path | None
) -> Tensor:
    if x_BD.ndim != 2 or x_BD.shape[1] != cfg.sae.d_in:
        raise ValueError(
            f"batch of step {step_no} has shape {tuple(x_BD.shape)}; expected [B, {cfg.sae.d_in}]"
        )
    bad = int(dist.all_reduce((~torch.isfinite(x_BD)).any(1).sum()))  # rows, on all ranks
    if bad:
        raise NonFiniteError(
            _stop_message(
                f"NaN or Inf in {bad} rows of the batch of step {step_no}", state, out_path
            )
        )
    return x_BD


def _stop_message(what: str, state: TrainState, out_path: Path | None) -> str:
    if out_path is None:
        kept = "no checkpoint was written (out_dir=None)"
    elif state.last_checkpoint is None:
        kept = f"no checkpoint was written to {out_path} yet"
    else:
        kept = f"the last good checkpoint (step {state.last_checkpoint}) is kept in {out_path}"
    return f"training stopped: {what}; {kept}"


def _log_point(sae, x_BD, loss, out, state, cfg, val_x, t0, start_step) -> dict[str, Any]:
    dead_S = state.examples_since_fired_S >= cfg.dead_after
    elapsed = time.perf_counter() - t0
    recon, aux, groups = loss.recon.detach(), loss.aux.detach(), loss.group_losses.detach()
    batch_metrics = None
    if dist.is_distributed():  # the global batch's figures, not this rank's slice
        share = dist.batch_share(x_BD.shape[0])[0]
        summed = dist.all_reduce(torch.cat([recon[None], aux[None], groups]).float() * share)
        recon, aux, groups = summed[0], summed[1], summed[2:]
        batch_metrics = global_reconstruction_metrics(x_BD, out)
    metrics: dict[str, Any] = {
        "step": state.step,
        "loss": float(loss.total.detach()),
        "recon_loss": float(recon),
        **(batch_metrics or reconstruction_metrics(x_BD, out)),
        "dead_fraction": float(dead_S.float().mean()),
        "aux_loss": float(aux),
        "lr": cfg.learning_rate * lr_factor(state.step - 1, cfg),
        "examples_per_s": (state.step - start_step) * cfg.batch_size / max(elapsed, 1e-9),
    }
    if sae.cfg.is_matryoshka:
        metrics["group_loss"] = [float(v) for v in groups]
    if sae.cfg.sparsity in ("relu", "jumprelu"):
        metrics["sparsity_penalty"] = float(loss.sparsity.detach())
    if sae.threshold is not None and sae.cfg.sparsity == "batchtopk":
        metrics["threshold"] = float(sae.threshold)
    if val_x is not None:
        metrics["val"] = evaluate_sae(sae, val_x, cfg.batch_size)
    return metrics


def _finish(sae, optimizer, state, cfg, source, out_path, val_x, metrics, t0, start_step):
    if sae.cfg.sparsity == "batchtopk" and float(sae.threshold) < 0:
        log.warning(
            "training ended before threshold_start_step=%d: the SAE has no inference "
            "threshold and encodes with per-example top-k",
            cfg.threshold_start_step,
        )
    if out_path is None:
        return
    if state.last_checkpoint != state.step:
        _checkpoint(out_path, sae, optimizer, state, cfg, source)
    if not dist.is_main():
        return
    if state.step == start_step and (out_path / SUMMARY_FILE).exists():
        log.info("%s already finished at step %d; nothing to do", out_path, state.step)
        return  # a resumed finished run keeps the summary of the run that trained it
    if not metrics:  # the run ended at its checkpoint: its last log point has the metrics
        metrics = MetricsLog.last(out_path) or {}
    elapsed = time.perf_counter() - t0
    summary = {
        "steps": state.step,
        "examples": state.step * cfg.batch_size,
        "seconds": elapsed,
        "examples_per_s": (state.step - start_step) * cfg.batch_size / max(elapsed, 1e-9),
        "final": {k: v for k, v in metrics.items() if k != "val"},
        "val": metrics.get("val")
        or (evaluate_sae(sae, val_x, cfg.batch_size) if val_x is not None else None),
        "norm_factor": state.norm_factor if cfg.normalize_activations else None,
        "sae": read_json(out_path / ckpt.CONFIG_FILE),
        "train": cfg.to_dict(),
        "data": source.description,
    }
    if not math.isfinite(summary["examples_per_s"]):
        summary["examples_per_s"] = None
    write_json(out_path / SUMMARY_FILE, summary)
