"""Steer LLaVA by clamping SAE neurons inside its vision tower.

The SAE is attached with :func:`vlmsae.encoders.attach_sae` at the output of a vision
block (``post_mlp_residual``); its codes on every token are edited by :func:`clamp_edit`
(``z[..., k] = α`` for each clamped neuron, optionally after zeroing all others) and
decoded back, so the language model, which is never touched, reads an edited image.

Modes (the CLI's ``--mode``): ``replace`` (the paper: the block output becomes the SAE
reconstruction of the edited codes) and ``preserve`` (error-preserving: the block output
becomes ``h + decode(z_edit) - decode(z)``, so clamping a neuron to its current value
changes nothing).

A block after the deepest one LLaVA reads (``vision_feature_layer``) can never reach the
language model; steering there is refused (:func:`check_steerable`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlmsae.encoders import Encoder, SAEAttachment, attach_sae

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

MODES = {"replace": "replace", "preserve": "error"}
"""CLI mode name -> :func:`attach_sae` mode."""


def check_steerable(encoder: Encoder, layer: int) -> int:
    """The 0-based block index of ``layer``; raises ValueError if LLaVA never reads it."""
    index = encoder.layer_index(layer)
    if not encoder.affects_output(index):
        read = encoder.read_layers
        raise ValueError(
            f"cannot steer at vision block {index} of {encoder.name}: the language model reads "
            f"the vision tower at block {max(read)} (vision_feature_layer="
            f"{encoder.model.config.vision_feature_layer}), so an edit at a later block never "
            f"reaches it; attach at a block <= {max(read)}"
        )
    return index


def clamp_edit(
    neurons: Mapping[int, float], *, pre_zero: bool = False, d_sae: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit of SAE codes ``z [..., S]`` that sets ``z[..., k] = α`` on every token.

    Args:
        neurons: ``{neuron k: α}``; α > 0 inserts the neuron's concept, 0 or negative
            suppresses it.
        pre_zero: zero every other code first (only the clamped neurons remain).
        d_sae: if given, neuron indices are checked against it.
    """
    if not neurons:
        raise ValueError("clamp at least one neuron: got an empty {neuron: alpha} mapping")
    for k in neurons:
        if int(k) < 0 or (d_sae is not None and int(k) >= d_sae):
            raise ValueError(f"neuron {k} is out of range for an SAE of width {d_sae}")
    index = torch.tensor([int(k) for k in neurons], dtype=torch.long)
    values = torch.tensor([float(a) for a in neurons.values()], dtype=torch.float32)

    def edit(z_BTS: torch.Tensor) -> torch.Tensor:
        if pre_zero:
            z_BTS = torch.zeros_like(z_BTS)
        z_BTS[..., index.to(z_BTS.device)] = values.to(z_BTS.device, z_BTS.dtype)
        return z_BTS

    return edit


def steer_sae(
    encoder: Encoder,
    sae: SAE,
    layer: int,
    neurons: Mapping[int, float],
    *,
    mode: str = "replace",
    pre_zero: bool = False,
) -> SAEAttachment:
    """Attach ``sae`` at block ``layer`` with neurons clamped; use as a context manager.

    ``mode`` is ``"replace"`` (the paper) or ``"preserve"`` (error-preserving).
    """
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; choose one of {sorted(MODES)}")
    index = check_steerable(encoder, layer)
    d_sae = getattr(getattr(sae, "cfg", None), "d_sae", None)
    edit = clamp_edit(neurons, pre_zero=pre_zero, d_sae=d_sae)
    return attach_sae(encoder, sae, index, mode=MODES[mode], edit=edit)


@dataclass(frozen=True)
class SAESteering:
    """Steering method "clamp SAE neurons" with one free strength α (for α sweeps)."""

    sae: Any
    """The SAE (``encode`` / ``decode``; ``cfg.d_sae``)."""
    layer: int
    """Vision block the SAE was trained on."""
    neurons: tuple[int, ...]
    """Neurons clamped together to α."""
    mode: str = "replace"
    """``replace`` (paper) or ``preserve``."""
    pre_zero: bool = False
    """Zero all other codes first."""
    name: str = "SAE"
    """Label in tables."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}; choose one of {sorted(MODES)}")
        if not self.neurons:
            raise ValueError("SAESteering needs at least one neuron")

    def attach(self, encoder: Encoder, alpha: float) -> SAEAttachment:
        """Attach with every neuron clamped to ``alpha``; a context manager."""
        return steer_sae(
            encoder,
            self.sae,
            self.layer,
            dict.fromkeys(self.neurons, float(alpha)),
            mode=self.mode,
            pre_zero=self.pre_zero,
        )
