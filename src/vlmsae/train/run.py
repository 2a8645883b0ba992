"""Training SAEs: ``train_sae(data, TrainConfig(...), out_dir=...)``, one :class:`Run` per SAE.

:func:`train_runs`, the one driver, reads each batch once and hands it to every :class:`Run`
at that step; :func:`train_sae` is its one-SAE case, :func:`~vlmsae.train.sweep.train_sweep`
its many-SAE case. A ``Run``: ``prepare`` (build or restore), ``step`` (one batch, then
``log_point`` and ``checkpoint`` when due), ``finish`` (last checkpoint, summary, the SAE).

The recipe is the paper's (its scripts through the dictionary_learning trainers); the step
is :mod:`vlmsae.train.step` and ``docs/fidelity.md`` lists every detail. SIGINT / SIGTERM
finish the current step, checkpoint and stop (:mod:`vlmsae.core.interrupt`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae.core import dist
from vlmsae.core.errors import NonFiniteError
from vlmsae.core.interrupt import graceful_stop
from vlmsae.core.io import read_json, remove_stale_temps, write_json
from vlmsae.core.lock import output_lock
from vlmsae.core.progress import progress, warn_once
from vlmsae.sae import checkpoint as ckpt
from vlmsae.sae.model import SAE, SAEOutput
from vlmsae.train.config import TrainConfig, lr_factor, warn_schedule
from vlmsae.train.data import (
    BatchSource,
    Data,
    cached_norm_factor,
    check_batch_size,
    fit_config,
    load_rows,
    make_source,
    shard_source,
)
from vlmsae.train.losses import LossOutput, batch_figures, dominance_warning
from vlmsae.train.placement import each_rank, owned
from vlmsae.train.state import (
    MetricsLog,
    TrainState,
    evaluate_sae,
    load_resume_state,
    save_training_checkpoint,
)
from vlmsae.train.step import init_b_dec, make_optimizer, train_step

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
OnStep = Callable[[int, dict[str, Any]], None]


def train_sae(
    data: Data,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    val: Data | None = None,
    resume: bool = False,
    on_step: OnStep | None = None,
    allow_mismatch: bool = False,
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
        allow_mismatch: resume on other data than the run's store (a warning, not an error).

    Under ``torchrun`` (``WORLD_SIZE > 1``) training is data parallel: every rank calls
    this with the same data and config, reads its slice of each global batch of
    ``cfg.batch_size`` rows, and ends with the weights one process would; rank 0 locks
    ``out_dir`` and writes it (see :mod:`vlmsae.core.dist`).

    Raises:
        NonFiniteError: a batch or the loss holds NaN / Inf; the message names the step,
            and the last checkpoint in ``out_dir`` is left untouched.
    """
    kw = dict(val=val, resume=resume, on_step=on_step, allow_mismatch=allow_mismatch)
    (sae,) = train_runs(data, [cfg], [out_dir], **kw)
    assert sae is not None  # replicated: every rank holds every SAE
    return sae


def train_runs(
    data: Data,
    cfgs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path | None],
    *,
    val: Data | None = None,
    resume: bool = False,
    placement: str = "replicate",
    on_step: OnStep | None = None,
    allow_mismatch: bool = False,
) -> list[SAE | None]:
    """Train one SAE per config (same ``batch_size`` and ``seed``) on one read of each
    batch: lock the run directories, prepare a :class:`Run` each, feed them, finish them.

    ``placement`` under ``torchrun`` (:mod:`vlmsae.train.placement`): ``"replicate"``
    (every SAE data parallel on every rank) or ``"spread"`` (each rank trains its own SAEs
    whole, as one process would); spread, a rank returns ``None`` for the SAEs of others.
    """
    dist.init_from_env()  # under torchrun: data parallel over the ranks
    whole = make_source(data)
    cfgs = [fit_config(cfg, whole) for cfg in cfgs]  # before anything is locked or written
    paths = [Path(d) if d is not None else None for d in out_dirs]
    mine = owned(cfgs, placement)
    spread = placement == "spread" and dist.is_distributed()
    show = dist.is_main()  # one progress indicator per job (spread, every rank is "main")
    saes: list[SAE | None] = [None] * len(cfgs)
    with ExitStack() as stack:
        with dist.together("locking the run directories"):
            for i in mine:  # one writer per run directory: its owner (rank 0 replicated)
                path = paths[i]
                if path is not None and (spread or dist.is_main()):
                    stack.enter_context(output_lock(path, "vlmsae train"))
                    remove_stale_temps(path)  # debris of a killed writer (we hold the lock)
        with each_rank("preparing the SAEs", spread):
            source, norm_factors = shard_source(whole), {}  # one scale estimate per read
            runs = [
                Run.prepare(source, cfgs[i], paths[i], val=val, resume=resume, on_step=on_step,
                            norm_factors=norm_factors, allow_mismatch=allow_mismatch)
                for i in mine
            ]  # fmt: skip
        # spread, a rank may finish hours before another: it waits without a timeout
        patient = stack.enter_context(dist.patient_group()) if spread else None
        with each_rank("training the SAEs", spread, patient):
            _feed(runs, source, show)
            for i, run in zip(mine, runs, strict=True):
                saes[i] = run.finish()
        dist.barrier()  # the owners' files are complete when this returns on any rank
    return saes


def _feed(runs: list[Run], source: BatchSource, show: bool) -> None:
    """Read each batch once and step every run that stands at its index: batch ``i`` (a
    pure function of ``seed`` and ``i``) goes to the runs at step ``i``, so runs resumed
    from different checkpoints each continue exactly."""
    todo = [run for run in runs if not run.done]
    if not todo:
        return
    first, total = todo[0].cfg, max(run.cfg.steps for run in todo)
    step = min(run.state.step for run in todo)
    batches = source.batches(first.batch_size, first.seed, step)
    desc = "train sae" if len(runs) == 1 else f"train {len(runs)} saes"
    off = not (show and first.progress)
    bar = progress(total=total, initial=step, desc=desc, unit="step", disable=off)
    with bar, graceful_stop() as stop:  # SIGINT / SIGTERM: finish the step, then save
        while any(not run.done for run in todo) and not stop.agreed():  # ranks in step
            x_BD = next(batches, None)
            if x_BD is None:
                log.warning("the data ran out after %d steps (of %d)", step, total)
                break
            for run in todo:
                if run.state.step == step and not run.done:
                    run.step(x_BD)
            if len(runs) == 1 and (m := runs[0].metrics):
                bar.set_postfix(loss=f"{m['loss']:.4g}", l0=f"{m['l0']:.1f}", r2=f"{m['r2']:.3f}")
            step += 1
            bar.update(1)
        stopped = stop.agreed()  # every rank asks: they agree
    if stopped:
        for run in todo:
            if run.out_path is not None and run.state.last_checkpoint != run.state.step:
                run.checkpoint()
        raise stop.interrupted(f"step {step} of {total}")


@dataclass(eq=False)  # a run is itself, not its fields
class Run:
    """One SAE in training, what each step needs besides the batch: ``Run.prepare``, then
    ``step`` once per batch until ``done``, then ``finish``."""

    sae: SAE
    optimizer: torch.optim.Optimizer
    state: TrainState
    cfg: TrainConfig
    source: BatchSource
    """The training data (this rank's slice of each batch, data parallel)."""
    out_path: Path | None
    """The run directory (``None``: everything stays in memory)."""
    val_x: Tensor | None = None
    """Held-out rows in training units (on rank 0, which evaluates)."""
    metrics_log: MetricsLog | None = None
    """``metrics.jsonl``, where this process writes the run directory."""
    on_step: OnStep | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last step's metrics (empty but at log points)."""
    start_step: int = field(init=False)
    """The step this process started from (0, or the resumed checkpoint's)."""
    t0: float = field(init=False, default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.start_step = self.state.step

    @property
    def done(self) -> bool:
        return self.state.step >= self.cfg.steps

    @classmethod
    def prepare(
        cls,
        source: BatchSource,
        cfg: TrainConfig,
        out_path: Path | None = None,
        *,
        val: Data | None = None,
        resume: bool = False,
        on_step: OnStep | None = None,
        norm_factors: dict[tuple[int, int, int], float] | None = None,
        allow_mismatch: bool = False,
    ) -> Run:
        """Build the SAE, its optimizer and state, or restore them from ``out_path``
        (``resume``). ``norm_factors`` caches the input scale by ``(batch_size, seed,
        norm_batches)`` across the runs that share one read of the data."""
        device = torch.device(cfg.device)
        sae = SAE(cfg.sae, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        sae.global_batch = dist.is_distributed()  # BatchTopK over every rank's slice
        optimizer = make_optimizer(sae, cfg)
        state = TrainState(0, torch.zeros(cfg.sae.d_sae, dtype=torch.int64, device=device))
        if resume:
            if out_path is None:
                raise ValueError("resume=True needs the out_dir of the interrupted run")
            load_resume_state(out_path, sae, optimizer, state, cfg, source,
                              publish=dist.is_main(), allow_mismatch=allow_mismatch)  # fmt: skip
        elif out_path is not None and ckpt.has_trainer_state(out_path):
            raise FileExistsError(
                f"{out_path} already holds a training run; pass --resume to continue it or "
                "choose another --out"
            )
        check_batch_size(cfg.batch_size, source)
        val_x = None
        if val is not None and dist.is_main():  # rank 0 evaluates and logs
            val_x = load_rows(val, cfg.val_rows, cfg.sae.d_in).to(device)
        warn_schedule(cfg)
        if cfg.normalize_activations and not resume:
            state.norm_factor = cached_norm_factor(source, cfg, norm_factors)
        if val_x is not None and cfg.normalize_activations:
            val_x = val_x / state.norm_factor  # metrics in training units (R², L0 are scale-free)
        writes = out_path is not None and dist.is_main()
        metrics_log = MetricsLog(out_path, state.step) if writes else None
        return cls(sae, optimizer, state, cfg, source, out_path, val_x, metrics_log, on_step)

    def step(self, x_BD: Tensor) -> None:
        """Train on one batch: check and normalise it, take the optimizer step, then log and
        checkpoint when due."""
        state, cfg = self.state, self.cfg
        step_no = state.step + 1
        x_BD = self._checked(x_BD, step_no).to(next(self.sae.parameters()).device)
        if cfg.normalize_activations:
            x_BD = x_BD / state.norm_factor  # unit mean squared norm
        if state.step == 0:
            init_b_dec(self.sae, x_BD)  # b_dec starts at the geometric median of batch 1
        try:
            loss, out = train_step(self.sae, self.optimizer, x_BD, state, cfg)
        except NonFiniteError as e:
            raise NonFiniteError(self._stopped(f"{e} at step {step_no}")) from None
        due = state.step % cfg.log_every == 0 or state.step == cfg.steps
        self.metrics = self.log_point(x_BD, loss, out) if due else {}
        if state.step % cfg.checkpoint_every == 0:
            self.checkpoint()
        if self.on_step is not None:
            self.on_step(state.step, self.metrics)

    def log_point(self, x_BD: Tensor, loss: LossOutput, out: SAEOutput) -> dict[str, Any]:
        """The metrics of the step just taken (of the global batch, and of the held-out rows
        where given), appended to ``metrics.jsonl``."""
        sae, state, cfg = self.sae, self.state, self.cfg
        batch = batch_figures(x_BD, loss, out)  # of the global batch
        dead_S = state.examples_since_fired_S >= cfg.dead_after
        metrics: dict[str, Any] = {
            "step": state.step,
            "loss": float(loss.total.detach()),
            "recon_loss": batch.recon,
            **batch.metrics,
            "dead_fraction": float(dead_S.float().mean()),
            "aux_loss": batch.aux,
            "lr": cfg.learning_rate * lr_factor(state.step - 1, cfg),
            "examples_per_s": self._examples_per_s(time.perf_counter() - self.t0),
        }
        if sae.cfg.is_matryoshka:
            metrics["group_loss"] = batch.group_losses
        if sae.cfg.sparsity in ("relu", "jumprelu"):
            metrics["sparsity_penalty"] = float(loss.sparsity.detach())
        if sae.threshold is not None and sae.cfg.sparsity == "batchtopk":
            metrics["threshold"] = float(sae.threshold)
        if self.val_x is not None:
            metrics["val"] = evaluate_sae(sae, self.val_x, cfg.batch_size)
        if self.metrics_log is not None:
            self.metrics_log.append(metrics)
        return metrics

    def checkpoint(self) -> None:
        """A resumable checkpoint of this step in the run directory, written by rank 0
        (every rank holds the same state); nothing without a run directory."""
        if self.out_path is None:
            return
        if dist.is_main():
            save_training_checkpoint(
                self.out_path, self.sae, self.optimizer, self.state, self.cfg, self.source
            )
        self.state.last_checkpoint = self.state.step

    def finish(self) -> SAE:
        """The last checkpoint and ``summary.json``; returns the SAE in eval mode, applying
        to raw inputs (the input scale folded into its biases and thresholds)."""
        sae, state, cfg = self.sae, self.state, self.cfg
        if sae.cfg.sparsity == "batchtopk" and float(sae.threshold) < 0:
            warn_once(  # a sweep's SAEs share the setting: once, not once per SAE
                log,
                "training ended before threshold_start_step=%d: the SAE has no inference "
                "threshold and encodes with per-example top-k",
                cfg.threshold_start_step,
            )
        if state.last_checkpoint != state.step:
            self.checkpoint()
        if self.out_path is not None and dist.is_main():
            self._write_summary(self.out_path)
        sae.release_buffers_()  # the step's kept buffers: not the returned SAE's to hold
        if cfg.normalize_activations:
            sae.scale_biases_(state.norm_factor)  # fold: the returned SAE applies to raw inputs
        return sae.eval()

    # -- helpers of the methods above ---------------------------------------------------------
    def _checked(self, x_BD: Tensor, step_no: int) -> Tensor:
        if x_BD.ndim != 2 or x_BD.shape[1] != self.cfg.sae.d_in:
            raise ValueError(
                f"batch of step {step_no} has shape {tuple(x_BD.shape)}; expected "
                f"[B, {self.cfg.sae.d_in}]"
            )
        bad = int(dist.all_reduce((~torch.isfinite(x_BD)).any(1).sum()))  # rows, on all ranks
        if bad:
            raise NonFiniteError(
                self._stopped(f"NaN or Inf in {bad} rows of the batch of step {step_no}")
            )
        return x_BD

    def _stopped(self, what: str) -> str:
        out, last = self.out_path, self.state.last_checkpoint
        if out is None:
            kept = "no checkpoint was written (out_dir=None)"
        elif last is None:
            kept = f"no checkpoint was written to {out} yet"
        else:
            kept = f"the last good checkpoint (step {last}) is kept in {out}"
        return f"training stopped: {what}; {kept}"

    def _examples_per_s(self, elapsed: float) -> float:
        return (self.state.step - self.start_step) * self.cfg.batch_size / max(elapsed, 1e-9)

    def _write_summary(self, out_path: Path) -> None:
        state, cfg = self.state, self.cfg
        if state.step == self.start_step and (out_path / SUMMARY_FILE).exists():
            log.info("%s already finished at step %d; nothing to do", out_path, state.step)
            return  # a resumed finished run keeps the summary of the run that trained it
        # a run that ended at its checkpoint: its last log point has the metrics
        metrics = self.metrics or MetricsLog.last(out_path) or {}
        elapsed = time.perf_counter() - self.t0
        rate = self._examples_per_s(elapsed)
        val = metrics.get("val") or (
            evaluate_sae(self.sae, self.val_x, cfg.batch_size) if self.val_x is not None else None
        )
        if warning := dominance_warning(val or metrics):
            log.warning("%s", warning)
        summary = {
            "steps": state.step,
            "examples": state.step * cfg.batch_size,
            "seconds": elapsed,
            "examples_per_s": rate if math.isfinite(rate) else None,
            "final": {k: v for k, v in metrics.items() if k != "val"},
            "val": val,
            "norm_factor": state.norm_factor if cfg.normalize_activations else None,
            "sae": read_json(out_path / ckpt.CONFIG_FILE),
            "train": cfg.to_dict(),
            "data": self.source.description,
        }
        write_json(out_path / SUMMARY_FILE, summary)
