"""Configuration of an SAE (its shape and sparsity) and of its training run.

Both are frozen dataclasses validated in ``__post_init__``; the same objects serve the
library, the CLI and the saved ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SPARSITIES = ("relu", "topk", "batchtopk", "jumprelu")
DTYPES = ("float32", "bfloat16")


def group_sizes_from_fractions(fractions: tuple[float, ...], d_sae: int) -> tuple[int, ...]:
    """Matryoshka group sizes: ``floor(f * d_sae)`` per group, the last takes the rest."""
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    return (*sizes, d_sae - sum(sizes))


@dataclass(frozen=True)
class SAEConfig:
    """Shape and sparsity of one sparse autoencoder."""

    d_in: int
    """Width of the input activations (the model's hidden size at the hook point)."""
    d_sae: int | None = None
    """Number of latents (dictionary size). Give this or ``expansion``."""
    expansion: int | None = None
    """Expansion factor: ``d_sae = expansion * d_in`` when ``d_sae`` is not given."""
    sparsity: str = "batchtopk"
    """Activation: ``relu`` (ReLU + L1), ``topk``, ``batchtopk`` or ``jumprelu``."""
    k: int | None = 20
    """Active latents per example for ``topk``; average per example for ``batchtopk``."""
    group_fractions: tuple[float, ...] | None = None
    """Matryoshka group fractions of ``d_sae`` (sum to 1), e.g. the paper's
    ``(0.0625, 0.125, 0.25, 0.5625)``."""
    group_sizes: tuple[int, ...] | None = None
    """Matryoshka group sizes (sum to ``d_sae``). Derived from ``group_fractions`` when not
    given; ``(d_sae,)`` for a plain SAE. Always set after construction."""
    group_weights: tuple[float, ...] | None = None
    """Weight ``w_g`` of each nested prefix's reconstruction loss; the loss is
    ``Σ_g w_g L_g / G``. Default ``1/G`` each, i.e. ``Σ_g L_g / G²`` (the paper's code)."""
    jumprelu_bandwidth: float = 1e-3
    """Width of the straight-through estimator's rectangle kernel (JumpReLU)."""
    jumprelu_init_threshold: float = 1e-3
    """Initial per-latent threshold (JumpReLU)."""
    model: str | None = None
    """Source model the SAE was trained on (copied from the activation store manifest)."""
    hookpoint: str | None = None
    """Hook point of the source activations (``post_mlp_residual`` | ``post_projection``)."""
    layer: int | None = None
    """Layer of the hook point (block outputs)."""
    tokens: str | None = None
    """Token selection of the source activations (``cls|mean|all|random:N``)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: fill the derived fields once, here only
        if self.d_in is None or int(self.d_in) <= 0:
            raise ValueError(f"d_in must be a positive integer, got {self.d_in!r}")
        if self.d_sae is None:
            if self.expansion is None:
                raise ValueError("give the dictionary size: d_sae=... or expansion=...")
            if self.expansion <= 0:
                raise ValueError(f"expansion must be positive, got {self.expansion}")
            set_(self, "d_sae", int(self.expansion) * int(self.d_in))
        elif self.expansion is not None and self.d_sae != self.expansion * self.d_in:
            raise ValueError(
                f"d_sae={self.d_sae} contradicts expansion={self.expansion} × d_in={self.d_in}; "
                "give only one of them"
            )
        if self.d_sae <= 0:
            raise ValueError(f"d_sae must be positive, got {self.d_sae}")
        if self.sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, got {self.sparsity!r}")
        if self.sparsity in ("topk", "batchtopk"):
            if self.k is None or self.k <= 0:
                raise ValueError(f"{self.sparsity} needs a positive k, got k={self.k}")
            if self.k > self.d_sae:
                raise ValueError(
                    f"k={self.k} is larger than d_sae={self.d_sae}; lower k or raise the expansion"
                )
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold < 0:
            raise ValueError("jumprelu_bandwidth must be > 0 and jumprelu_init_threshold >= 0")
        self._init_groups(set_)

    def _init_groups(self, set_: Any) -> None:
        if self.group_fractions is not None:
            fractions = tuple(float(f) for f in self.group_fractions)
            if not fractions or any(f <= 0 for f in fractions):
                raise ValueError(f"group fractions must be positive, got {fractions}")
            if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
                raise ValueError(
                    f"group fractions must sum to 1, got {fractions} (sum {sum(fractions):.6g}); "
                    "make the last group take the rest"
                )
            set_(self, "group_fractions", fractions)
            derived = group_sizes_from_fractions(fractions, self.d_sae)
            if self.group_sizes is not None and tuple(self.group_sizes) != derived:
                raise ValueError(
                    f"group_sizes {self.group_sizes} do not match group_fractions {fractions} "
                    f"for d_sae={self.d_sae} (expected {derived}); give only one of them"
                )
            set_(self, "group_sizes", derived)
        sizes = tuple(int(s) for s in (self.group_sizes or (self.d_sae,)))
        if any(s <= 0 for s in sizes):
            raise ValueError(
                f"every Matryoshka group needs at least one latent, got sizes {sizes}; "
                "use larger fractions or a larger d_sae"
            )
        if sum(sizes) != self.d_sae:
            raise ValueError(f"group sizes {sizes} sum to {sum(sizes)}, not d_sae={self.d_sae}")
        set_(self, "group_sizes", sizes)
        if self.group_weights is not None:
            weights = tuple(float(w) for w in self.group_weights)
            if len(weights) != len(sizes) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"group_weights {weights} must be {len(sizes)} non-negative numbers, "
                    "not all zero (one per group)"
                )
            set_(self, "group_weights", weights)

    @property
    def n_groups(self) -> int:
        return len(self.group_sizes)

    @property
    def is_matryoshka(self) -> bool:
        return self.n_groups > 1

    @property
    def group_ends(self) -> tuple[int, ...]:
        """Exclusive end of each nested prefix: the first ``group_ends[g]`` latents."""
        ends, total = [], 0
        for s in self.group_sizes:
            total += s
            ends.append(total)
        return tuple(ends)

    @property
    def arch(self) -> str:
        """Short name: ``matryoshka`` for a grouped BatchTopK SAE, otherwise the sparsity."""
        if self.is_matryoshka:
            return "matryoshka" if self.sparsity == "batchtopk" else f"matryoshka-{self.sparsity}"
        return self.sparsity

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SAE config fields {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


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
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:1``...)."""
    log_every: int = 100
    """Log training (and validation) metrics every this many steps, and at the end."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps, and at the end."""
    val_rows: int = 8192
    """Held-out rows evaluated at each log point (when a validation set is given)."""
    progress: bool = True
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
        d = dataclasses.asdict(self)
        d["sae"] = self.sae.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["sae"] = SAEConfig.from_dict(d["sae"])
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


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
