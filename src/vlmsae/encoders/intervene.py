"""Attach an SAE at a hook point: the intervention mechanism steering builds on.

Two modes (DESIGN.md, "Hook points"), with ``z = sae.encode(h)``:

- ``replace``: the block output becomes ``decode(edit(z))`` (the paper's behaviour; with
  no edit, the SAE reconstruction).
- ``error``: the block output becomes ``h + decode(edit(z)) - decode(z)``: the SAE error
  is kept, so an attachment that edits nothing leaves the model unchanged.

The hook is registered with ``prepend=True``: transformers 5.x records hidden states
(which LLaVA reads through ``vision_feature_layer``) with its own forward hooks, and an
intervention registered after them would change the block output but not the recorded
hidden state. Replacing the block by a wrapper module has no effect for the same reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from vlmsae.encoders.adapters import Encoder, block_output

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)
MODES = ("replace", "error")
CodeEdit = Callable[[torch.Tensor], torch.Tensor]


class SparseCoder(Protocol):
    """What an attached SAE must provide (``vlmsae.SAE`` does)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class BlockEdit:
    """A forward hook that replaces a block's output with ``self.apply(output)``.

    Registered with ``prepend=True`` (see the module docstring); remove it with
    :meth:`remove` or use the object as a context manager. Subclasses define ``apply``.
    """

    _handle: Any

    def _register(self, block: nn.Module) -> None:
        self._handle = block.register_forward_hook(self._hook, prepend=True)

    def apply(self, h_BTD: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        edited = self.apply(block_output(output))
        if isinstance(output, tuple):
            return (edited, *output[1:])
        if isinstance(output, list):
            return [edited, *output[1:]]
        return edited

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class SAEAttachment(BlockEdit):
    """A live SAE attachment; remove it with :meth:`remove` or use it as a context manager.

    Attributes:
        layer: the block index it is attached to.
        mode: ``"replace"`` or ``"error"``.
        affects_output: False when the surrounding model never reads this block
            (e.g. LLaVA's last vision block); a warning is logged at attach time.
    """

    def __init__(
        self, encoder: Encoder, sae: SAE, layer: int, mode: str, edit: CodeEdit | None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown attachment mode {mode!r}; choose one of {MODES}")
        for method in ("encode", "decode"):
            if not callable(getattr(sae, method, None)):
                raise TypeError(f"the SAE must have an {method}() method; got {type(sae).__name__}")
        self.encoder, self.sae, self.mode, self.edit = encoder, sae, mode, edit
        if getattr(sae, "training", False):
            log.warning(
                "the attached SAE is in training mode (BatchTopK mixes examples); "
                "call sae.eval() first"
            )
        self.layer = encoder.layer_index(layer)
        self.affects_output = encoder.affects_output(self.layer)
        if not self.affects_output:
            log.warning(
                "block %d of %s is never read by the model around it (it reads blocks %s): "
                "an SAE attached there changes nothing downstream",
                self.layer,
                encoder.name,
                encoder.read_layers,
            )
        self._register(encoder.blocks[self.layer])

    def apply(self, h_BTD: torch.Tensor) -> torch.Tensor:
        """The edited block output for a block output ``h_BTD`` (any leading shape)."""
        sae_dtype = _param_dtype(self.sae, h_BTD.dtype)
        x = h_BTD.to(sae_dtype)
        z = self.sae.encode(x)
        z_edit = self.edit(z.clone()) if self.edit is not None else z
        if self.mode == "replace":
            out = self.sae.decode(z_edit)
        else:
            out = x + (self.sae.decode(z_edit) - self.sae.decode(z)) if self.edit else x
        return out.to(h_BTD.dtype)


def attach_sae(
    encoder: Encoder,
    sae: SAE,
    layer: int,
    *,
    mode: str = "error",
    edit: CodeEdit | None = None,
) -> SAEAttachment:
    """Attach ``sae`` at the output of block ``layer`` (``post_mlp_residual``).

    Args:
        encoder: the wrapped model (any :class:`Encoder`, LLaVA included).
        sae: anything with ``encode(x [.., d_in]) -> z [.., d_sae]`` and ``decode(z)``.
        layer: block index (negative counts from the end).
        mode: ``"error"`` (keep the SAE error; default) or ``"replace"``.
        edit: optional function mapping codes ``z [B, T, d_sae]`` to edited codes, e.g.
            ``lambda z: z.index_fill(-1, torch.tensor([k]), alpha)`` to clamp neuron ``k``.
            It receives a copy and may modify it in place.

    Returns an :class:`SAEAttachment`; use ``with attach_sae(...):`` or call ``.remove()``.
    """
    return SAEAttachment(encoder, sae, layer, mode, edit)


def _param_dtype(module: Any, default: torch.dtype) -> torch.dtype:
    params = getattr(module, "parameters", None)
    if params is None:
        return default
    first = next(iter(params()), None)
    return first.dtype if first is not None else default
