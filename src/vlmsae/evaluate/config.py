"""Configs of ``vlmsae evaluate`` (no heavy imports: the CLI reads their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

DETECTOR_F1 = 0.5
"""A concept counts as detected when its best latent reaches this F1."""


@dataclass(frozen=True)
class ProbingConfig:
    """How sparse probes are chosen, fitted and scored."""

    k_values: tuple[int, ...] = (1, 2, 5, 20)
    """Numbers of latents per probe."""
    test_fraction: float = 0.3
    """Share of the images held out for scoring (drawn at random with ``seed``)."""
    seed: int = 0
    """Seed of the train/test split."""
    l2: float = 1e-3
    """L2 penalty on the weights of standardised features (per mean training loss)."""
    max_iter: int = 50
    """Newton steps at most (a probe converges in about ten)."""
    concepts_per_block: int = 16
    """Concepts fitted together (memory: ``block × n_train × max(k)`` floats)."""

    def __post_init__(self) -> None:
        if not self.k_values or min(self.k_values) < 1:
            raise ValueError(f"k_values must be positive integers, got {self.k_values}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.l2 <= 0 or self.max_iter < 1 or self.concepts_per_block < 1:
            raise ValueError("l2 must be > 0, max_iter and concepts_per_block >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """How ``vlmsae evaluate`` reads the store and scores concepts."""

    aggregate: str = "max"
    """Several rows (tokens) per image: ``max`` or ``mean`` of each latent over them."""
    chunk_rows: int = 8192
    """Store rows read (and encoded) at a time."""
    threshold: float = DETECTOR_F1
    """A concept counts as detected where its best latent reaches this F1."""
    baselines: bool = True
    """Also evaluate the raw neurons and an untrained SAE of the same shape."""
    untrained_seed: int = 0
    """Seed of the untrained SAE's initialisation."""
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """The k-sparse probes."""

    def __post_init__(self) -> None:
        if self.aggregate not in ("max", "mean"):
            raise ValueError(f"aggregate must be 'max' or 'mean', got {self.aggregate!r}")
        if self.chunk_rows < 1 or not 0 < self.threshold <= 1:
            raise ValueError("chunk_rows must be >= 1 and threshold in (0, 1]")
