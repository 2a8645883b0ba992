"""Configuration of a training run: the recipe and the run options.

A frozen dataclass validated in ``__post_init__``; the same object serves the library, the
CLI and the saved ``config.json``. Its fields are of two kinds. The *recipe* (every field
but the run options) defines the SAE you get: the same recipe and data train the same
weights on one kind of device. The *run options* (fields declared with ``_run_option``:
device, progress, log and checkpoint cadence, validation rows) say how one run executes; a
resumed run may change them (and raise ``steps``, which extends it).
:meth:`TrainConfig.recipe` is the recipe's view, :data:`RUN_OPTIONS` the names.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from vlmsae.sae.config import DTYPES, SAEConfig

log = logging.getLogger(__name__)


def _run_option(default: Any) -> Any:
    """A field that says how a run executes, not which SAE it trains (not in the recipe)."""
    return dataclasses.field(default=default, metadata={"run_option": True})


@dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE. Every default is the paper's recipe (its ``sae_train.py`` and
    scripts, through the dictionary_learning trainers it vendors); ``docs/fidelity.md``
    lists each one and the options that depart from it."""

    sae: SAEConfig
    """The SAE to train."""
    steps: int = 110_000
    """Optimizer steps."""
    batch_size: int = 4096
    """Examples (activation rows) per step."""
    lr: float | None = None
    """Adam learning rate; ``None`` = ``2e-4 / sqrt(d_sae / 2**14)``."""
    seed: int = 0
    """Seed of initialisation and data order."""
    warmup_steps: int = 1000
    """Linear learning-rate warm-up: step ``s`` (0-based) uses ``lr · s / warmup_steps``."""
    decay_start: float | None = None
    """Fraction of ``steps`` after which the lr decays linearly to 0. ``None`` (the paper's
    scripts: ``decay_start = steps - 1``, which never lowers the lr) means no decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this value (``0`` disables)."""
    aux_alpha: float = 0.03
    """Weight of the AuxK loss on dead latents (TopK / BatchTopK; 0 disables). The paper's
    scripts pass 0.03 (dictionary_learning's own default is 1/32)."""
    aux_k: int | None = None
    """Dead latents each example may use in AuxK (``None``: ``d_in // 2``)."""
    dead_after: int = 10_000_000
    """A latent is dead after this many training examples without firing."""
    l1_coeff: float = 1e-3
    """L1 penalty on codes × decoder norms (``relu``)."""
    l0_coeff: float = 1e-3
    """L0 penalty (``jumprelu``)."""
    threshold_beta: float = 0.999
    """EMA factor of the BatchTopK inference threshold."""
    threshold_start_step: int = 1000
    """The BatchTopK threshold is updated at the steps after this one (0-based step index
    ``> threshold_start_step``, as in the paper's code)."""
    normalize_activations: bool = True
    """Divide the inputs by a scale estimated from the training data, so that they have unit
    mean squared norm, and fold it back into the saved weights (biases and thresholds), so
    that the saved SAE applies to raw activations (dictionary_learning's ``trainSAE``)."""
    norm_batches: int = 100
    """Batches of the training data read to estimate that scale."""
    dtype: str = "float32"
    """Compute dtype of the encoder product: ``float32`` or ``bfloat16`` (autocast)."""
    # -- run options: how this run executes, not which SAE it trains -----------------------
    device: str = _run_option("cpu")
    """Torch device (``cpu``, ``cuda``, ``cuda:1``...)."""
    log_every: int = _run_option(100)
    """Log training (and validation) metrics every this many steps, and at the end."""
    checkpoint_every: int = _run_option(1000)
    """Write a resumable checkpoint every this many steps, and at the end."""
    val_rows: int = _run_option(8192)
    """Held-out rows evaluated at each log point (when a validation set is given)."""
    progress: bool = _run_option(True)
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if not isinstance(self.sae, SAEConfig):
            raise ValueError(f"sae must be an SAEConfig, got {type(self.sae).__name__}")
        for name in (
            "steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "val_rows",
            "norm_batches",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive (or None for the default), got {self.lr}")
        if self.warmup_steps < 0 or self.threshold_start_step < 0:
            raise ValueError("warmup_steps and threshold_start_step must be >= 0")
        if self.decay_start is not None and not 0 <= self.decay_start <= 1:
            raise ValueError(
                f"decay_start is a fraction of steps in [0, 1] (or None for no decay), "
                f"got {self.decay_start}"
            )
        if not 0 <= self.threshold_beta < 1:
            raise ValueError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.dead_after <= 0 or self.aux_alpha < 0 or self.grad_clip < 0:
            raise ValueError("dead_after must be > 0; aux_alpha and grad_clip must be >= 0")
        if self.aux_k is not None and self.aux_k <= 0:
            raise ValueError(f"aux_k must be positive, got {self.aux_k}")
        if self.sae.sparsity == "batchtopk" and self.sae.k * self.batch_size > 2**31 - 1:
            raise ValueError("k × batch_size is too large for one BatchTopK selection")

    @property
    def learning_rate(self) -> float:
        """The lr in use: the given one or the paper's ``2e-4 / sqrt(d_sae / 2**14)``."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.sae.d_sae / 2**14)

    @property
    def k_aux(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, self.sae.d_in // 2)

    def to_dict(self) -> dict[str, Any]:
        """Every field (``config.json``'s ``train`` block)."""
        d = dataclasses.asdict(self)
        d["sae"] = self.sae.to_dict()
        return d

    def recipe(self) -> dict[str, Any]:
        """The fields that define the SAE this config trains: :meth:`to_dict` without the
        run options (:data:`RUN_OPTIONS`)."""
        return recipe_of(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["sae"] = SAEConfig.from_dict(d["sae"])
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


RUN_OPTIONS = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("run_option")
)
"""Names of the run options: how a run executes (a resumed run may change them)."""


def recipe_of(train: dict[str, Any]) -> dict[str, Any]:
    """The recipe of a ``TrainConfig.to_dict()`` (also one read back from disk)."""
    return {k: v for k, v in train.items() if k not in RUN_OPTIONS}


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warm-up ``step / warmup``
    (0 at step 0, as dictionary_learning's schedule), then constant, then (with
    ``decay_start``) linear decay to 0 from ``decay_start * steps``."""
    factor = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.decay_start is not None:
        start = int(cfg.decay_start * cfg.steps)
        if step >= start and cfg.steps > start:
            factor *= (cfg.steps - step) / (cfg.steps - start)
    return factor


def warn_schedule(cfg: TrainConfig) -> None:
    """Say up front when a short run cannot follow its schedule (once per process)."""
    from vlmsae.core.progress import warn_once

    if cfg.warmup_steps >= cfg.steps:
        warn_once(  # a sweep shares the setting: once, not once per SAE
            log,
            "warmup_steps=%d >= steps=%d: the lr never reaches its base value; lower "
            "--warmup-steps",
            cfg.warmup_steps,
            cfg.steps,
        )
    if cfg.sae.sparsity == "batchtopk" and cfg.threshold_start_step >= cfg.steps - 1:
        warn_once(
            log,
            "threshold_start_step=%d >= steps - 1: the BatchTopK inference threshold will never "
            "be set and the SAE will encode with per-example top-k; lower "
            "--threshold-start-step",
            cfg.threshold_start_step,
        )
