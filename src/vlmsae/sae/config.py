"""Configuration of an SAE: its shape and sparsity.

A frozen dataclass validated in ``__post_init__``; the same objects serve the
library, the CLI and the saved ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SPARSITIES = ("relu", "topk", "batchtopk", "jumprelu")
DTYPES = ("float32", "bfloat16")
CONFIG_SOURCE_FIELDS = ("model", "hookpoint", "layer", "tokens")
"""The SAEConfig fields that say which activations the SAE reads (a store's
:data:`~vlmsae.data.provenance.SOURCE_FIELDS` add the model revision)."""
PAPER_GROUP_FRACTIONS = (0.0625, 0.125, 0.25, 0.5625)
"""The paper's Matryoshka group fractions of ``d_sae`` (``vlmsae train --arch matryoshka``)."""


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
    :data:`PAPER_GROUP_FRACTIONS` ``(0.0625, 0.125, 0.25, 0.5625)``."""
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
