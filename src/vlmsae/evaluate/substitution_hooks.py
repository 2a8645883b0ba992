"""What substituting an SAE at a hook point does to the model's activations.

The SAE reads the rows its token selection makes of a block output (without DINOv2's register
tokens, which no SAE sees); substitution writes new rows back to the same places and the rest
of the model runs on the result:

- ``cls``: the CLS token is replaced; the other tokens are kept.
- ``all`` and ``random:N``: every image token is replaced (``random:N`` samples the same
  population of tokens as ``all``, so the SAE is spliced in wherever its inputs come from;
  the registers are kept).
- ``mean``: the SAE saw the token mean ``m`` of each image, so every image token is shifted
  by ``new(m) - m``: the token mean becomes ``new(m)`` and each token's deviation from the
  mean is kept.
- ``post_projection``: the final embedding itself is replaced (no hook; see
  :func:`substitute_rows`).

The new rows of each variant (``new`` above), from the SAE's rows ``x``:
``sae``: ``decode(encode(x))``; ``zero``: ``0``; ``mean``: the dataset mean of the rows
(:func:`dataset_mean`); ``identity``: ``decode(encode(x)) + (x - decode(encode(x)))``, the
reconstruction plus the SAE error, which must give back the original outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.encoders.intervene import BlockEdit
from vlmsae.encoders.tokens import TokenSelection

if TYPE_CHECKING:
    from vlmsae.encoders.adapters import Encoder
    from vlmsae.sae import SAE

VARIANTS = ("original", "sae", "zero", "mean", "identity")
"""Every forward a batch gets: the untouched model, the SAE spliced in, the two ablations and
the identity check (reconstruction + error)."""
ABLATIONS = ("zero", "mean")


def substitute_rows(
    x_RD: torch.Tensor, variant: str, sae: SAE, mean_D: torch.Tensor | None
) -> torch.Tensor:
    """The rows that replace the SAE's input rows ``x_RD`` in ``variant`` (same dtype)."""
    if variant == "original":
        return x_RD
    if variant == "zero":
        return torch.zeros_like(x_RD)
    if variant == "mean":
        assert mean_D is not None, "the mean ablation needs the dataset mean"
        return mean_D.to(x_RD).expand_as(x_RD)
    sae_dtype = next(iter(sae.parameters())).dtype
    x = x_RD.to(sae_dtype)
    recon = sae.decode(sae.encode(x))
    if variant == "sae":
        return recon.to(x_RD.dtype)
    assert variant == "identity", f"unknown variant {variant!r}"
    return (recon + (x - recon)).to(x_RD.dtype)


def image_positions(n_tokens: int, n_registers: int) -> torch.Tensor:
    """Token positions the SAE's rows come from: every token but the register tokens
    (which follow the CLS token in DINOv2 with registers)."""
    keep = [0, *range(1 + n_registers, n_tokens)]
    return torch.tensor(keep, dtype=torch.long)


def sae_rows(h_BTD: torch.Tensor, selection: TokenSelection, n_registers: int) -> torch.Tensor:
    """The rows ``[R, D]`` whose dataset mean is the mean ablation: the CLS tokens (``cls``),
    the token means (``mean``) or every image token (``all``, ``random:N``)."""
    if selection.kind == "cls":
        return h_BTD[:, 0]
    tokens_BTD = h_BTD[:, image_positions(h_BTD.shape[1], n_registers).to(h_BTD.device)]
    if selection.kind == "mean":
        return tokens_BTD.mean(dim=1)
    return tokens_BTD.reshape(-1, h_BTD.shape[-1])


def substitute_block(
    h_BTD: torch.Tensor,
    selection: TokenSelection,
    n_registers: int,
    variant: str,
    sae: SAE,
    mean_D: torch.Tensor | None,
) -> torch.Tensor:
    """A block output with the SAE's tokens substituted in ``variant`` (see the module doc)."""
    if variant == "original":
        return h_BTD
    out_BTD = h_BTD.clone()
    if selection.kind == "cls":
        out_BTD[:, 0] = substitute_rows(h_BTD[:, 0], variant, sae, mean_D)
        return out_BTD
    b, t, d = h_BTD.shape
    pos = image_positions(t, n_registers).to(h_BTD.device)
    tokens_BPD = h_BTD[:, pos]
    if selection.kind == "mean":
        m_BD = tokens_BPD.mean(dim=1)
        shift_BD = substitute_rows(m_BD, variant, sae, mean_D) - m_BD
        out_BTD[:, pos] = tokens_BPD + shift_BD[:, None]
        return out_BTD
    new_RD = substitute_rows(tokens_BPD.reshape(-1, d), variant, sae, mean_D)
    out_BTD[:, pos] = new_RD.reshape(b, len(pos), d)
    return out_BTD


class TokenSubstitution(BlockEdit):
    """A forward hook on block ``layer`` that substitutes the SAE's tokens in the variant
    set by :meth:`running` (``"original"`` leaves the block alone).

    ``replay``: a variant's forward after the batch's ``original`` one does not recompute
    blocks ``0 .. layer`` (their outputs are the original's): while it runs, those blocks
    return the output block ``layer`` gave in the original forward, and the hook substitutes
    into it, so only the blocks after the hook are computed. Blocks before the hook then
    return a stand-in, so replay is only for a model that reads nothing but its last block
    (a standalone encoder, not LLaVA, which may read earlier hidden states)."""

    def __init__(
        self,
        encoder: Encoder,
        layer: int,
        selection: TokenSelection,
        sae: SAE,
        mean_D: torch.Tensor | None,
        *,
        replay: bool = False,
    ) -> None:
        self.selection, self.sae, self.mean_D = selection, sae, mean_D
        self.n_registers = encoder.n_registers
        self.variant = "original"
        self.layer = encoder.layer_index(layer)
        self.prefix = list(encoder.blocks[: self.layer + 1])
        self.replay = replay
        self._cached: Any = None
        self._register(encoder.blocks[self.layer])

    @contextmanager
    def running(self, variant: str) -> Iterator[None]:
        """Run one forward in ``variant``; ``original`` first for every batch."""
        self.variant = variant
        if variant == "original":
            self._cached = None
        skip = self.replay and variant != "original" and self._cached is not None
        saved = [block.__dict__.get("forward") for block in self.prefix]
        if skip:
            for block in self.prefix:
                block.forward = self._replayed  # an instance attribute: hooks still run
        try:
            yield
        finally:
            if skip:
                for block, forward in zip(self.prefix, saved, strict=True):
                    del block.forward
                    if forward is not None:
                        block.forward = forward

    def _replayed(self, *args: Any, **kwargs: Any) -> Any:
        return self._copy(self._cached)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.variant == "original" and self.replay:
            self._cached = self._copy(output)  # a copy: later blocks may work in place
        return super()._hook(module, args, output)

    @staticmethod
    def _copy(out: Any) -> Any:
        if isinstance(out, (tuple, list)):
            return type(out)([out[0].clone(), *out[1:]])
        return out.clone()

    def apply(self, h_BTD: torch.Tensor) -> torch.Tensor:
        return substitute_block(
            h_BTD, self.selection, self.n_registers, self.variant, self.sae, self.mean_D
        )


@torch.inference_mode()
def dataset_mean(
    encoder: Encoder,
    batches: Any,
    layer: int | None,
    selection: TokenSelection | None,
) -> torch.Tensor:
    """``[D]`` float32 mean of the rows the SAE reads over the images of ``batches`` (this
    rank's share; the sums are all-reduced, so every rank gets the dataset mean).

    ``layer`` None: the final embeddings (``post_projection``)."""
    sum_D: torch.Tensor | None = None
    count = 0
    for batch in batches:
        if batch.pixel_values is None:
            continue
        if layer is None:
            rows_RD = encoder.embed(batch.pixel_values)
        else:
            h_BTD = encoder.capture(batch.pixel_values, [layer])[encoder.layer_index(layer)]
            assert selection is not None
            rows_RD = sae_rows(h_BTD, selection, encoder.n_registers)
        part_D = rows_RD.double().sum(0).cpu()
        sum_D = part_D if sum_D is None else sum_D + part_D
        count += rows_RD.shape[0]
    width = encoder.d_model if layer is not None else encoder.d_embed
    total = torch.zeros(width + 1, dtype=torch.float64)
    if sum_D is not None:
        total[:-1] = sum_D
    total[-1] = count
    dist.all_reduce(total)
    if total[-1] == 0:
        raise UserError("none of the images could be read: no dataset mean")
    return (total[:-1] / total[-1]).float()
