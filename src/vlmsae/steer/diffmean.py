"""DiffMean: the steering baseline the paper compares SAE neurons with.

The direction of a concept is the mean activation at the steering hook point over
images that show it minus the mean over images that do not (one direction per label:
``directions_from_labels``). Insertion adds ``α · direction`` to every token of
the block output; suppression removes ``α`` times the component of every token along the
direction (``α = 1`` projects it out; ``α > 1`` pushes past zero).

Registered like the SAE attachment: a forward hook on the block with ``prepend=True``
(transformers 5.x records LLaVA's hidden states with its own hooks; an intervention
registered after them would not reach the language model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlmsae.encoders import Encoder
from vlmsae.encoders.intervene import BlockEdit
from vlmsae.steer.steering import check_steerable

KINDS = ("insert", "suppress")


def diffmean_direction(acts_with_ND: Any, acts_without_MD: Any) -> torch.Tensor:
    """``[D]`` float32: mean of rows with the concept minus mean of rows without it.

    Rows are activations at the hook point (per token or pooled per image; pass the same
    kind for both sets). Raises ValueError if a set is empty or the widths differ.
    """
    pos = torch.as_tensor(np.asarray(acts_with_ND, dtype=np.float32))
    neg = torch.as_tensor(np.asarray(acts_without_MD, dtype=np.float32))
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(
            f"expected two [rows, d] arrays of the same width, got {tuple(pos.shape)} and "
            f"{tuple(neg.shape)}"
        )
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            "DiffMean needs rows with and without the concept; one of the sets is empty"
        )
    return pos.mean(0) - neg.mean(0)


def directions_from_labels(
    acts_ND: Any, labels_N: Any, values: Any = None
) -> dict[str, torch.Tensor]:
    """One DiffMean direction per label value (``values``; default every value present):
    rows with that label vs all other rows."""
    acts = np.asarray(acts_ND, dtype=np.float32)
    labels = np.asarray(labels_N).astype(str)
    if len(acts) != len(labels):
        raise ValueError(f"{len(acts)} activation rows but {len(labels)} labels")
    values = np.unique(labels) if values is None else [str(v) for v in values]
    return {str(v): diffmean_direction(acts[labels == v], acts[labels != v]) for v in values}


class DiffMeanHook(BlockEdit):
    """A live DiffMean intervention on one vision block; a context manager."""

    def __init__(
        self, encoder: Encoder, layer: int, direction_D: torch.Tensor, kind: str, alpha: float
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown DiffMean kind {kind!r}; choose one of {KINDS}")
        direction_D = torch.as_tensor(direction_D, dtype=torch.float32).flatten()
        if direction_D.shape[0] != encoder.d_model:
            raise ValueError(
                f"the direction has width {direction_D.shape[0]} but block outputs of "
                f"{encoder.name} have width {encoder.d_model}"
            )
        if kind == "suppress" and float(direction_D.norm()) == 0:
            raise ValueError("cannot suppress along a zero direction")
        self.layer = check_steerable(encoder, layer)
        self.kind, self.alpha = kind, float(alpha)
        self.direction_D = direction_D
        self.unit_D = direction_D / direction_D.norm().clamp_min(1e-12)
        self._register(encoder.blocks[self.layer])

    def apply(self, h_BTD: torch.Tensor) -> torch.Tensor:
        """The edited block output (any leading shape)."""
        x = h_BTD.float()
        if self.kind == "insert":
            out = x + self.alpha * self.direction_D.to(x.device)
        else:
            unit = self.unit_D.to(x.device)
            out = x - self.alpha * (x @ unit)[..., None] * unit
        return out.to(h_BTD.dtype)


@dataclass(frozen=True)
class DiffMeanSteering:
    """Steering method "add / remove a DiffMean direction" with one free strength α."""

    direction: torch.Tensor
    """``[D]`` the concept direction (not normalised: α = 1 inserts one mean difference)."""
    layer: int
    """Vision block to edit."""
    kind: str = "insert"
    """``insert`` (add α·direction) or ``suppress`` (remove α × the component)."""
    name: str = "DiffMean"
    """Label in tables."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown DiffMean kind {self.kind!r}; choose one of {KINDS}")

    def attach(self, encoder: Encoder, alpha: float) -> DiffMeanHook:
        return DiffMeanHook(encoder, self.layer, self.direction, self.kind, alpha)
