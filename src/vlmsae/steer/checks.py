"""Checks of a steering request made before LLaVA loads (minutes for a real model).

Everything that can be known from the SAE's config and the model's ``config.json`` is
checked here, so that a mistyped ``--neuron`` or ``--layer`` is one ``Error:`` line instead of
a traceback after the weights have loaded; and an SAE trained on other tokens than the ones
steering edits (every image token of the block) is refused unless asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from vlmsae.core.errors import UserError

if TYPE_CHECKING:
    from vlmsae.sae.config import SAEConfig

log = logging.getLogger(__name__)
SINGLE_ROW_TOKENS = {"cls": "the CLS token only", "mean": "the mean over the tokens"}
"""Token selections whose SAE saw one row per image, not the tokens steering edits."""


class SteerTarget(NamedTuple):
    """Where a steering request acts, as checked."""

    block: int
    """0-based vision block the SAE is attached at."""
    n_blocks: int
    """Blocks of the vision tower."""


def _vision_tower(model: str | Path) -> tuple[str, object]:
    from vlmsae.encoders.hub import load_model_config

    config = load_model_config(model, kind="llava")
    if getattr(config, "model_type", None) != "llava":
        raise UserError(
            f"{model} is a {getattr(config, 'model_type', None)} model, not a LLaVA: steering "
            "needs a LLaVA (model_type llava), e.g. llava-hf/llava-1.5-7b-hf or toyworld/llava"
        )
    return str(model), config


def check_tokens(sae_cfg: SAEConfig, block: int, allow_mismatch: bool) -> None:
    """Refuse (or, with ``allow_mismatch``, warn about) an SAE trained on one row per
    image (``cls``, ``mean``) for steering, which clamps its neuron on every image token."""
    tokens = getattr(sae_cfg, "tokens", None)
    saw = SINGLE_ROW_TOKENS.get(str(tokens).split(":")[0]) if tokens is not None else None
    if saw is None:
        return
    what = (
        f"the SAE was trained on {saw} (tokens={tokens}) but steering clamps its neurons on "
        f"every image token of block {block}"
    )
    if not allow_mismatch:
        raise UserError(
            f"{what}; give an SAE trained on every token (cache with --tokens all or "
            "random:N), or pass --allow-mismatch to steer with it anyway"
        )
    log.warning("%s (--allow-mismatch): its codes on patch tokens are out of distribution", what)


def check_steer_request(
    model: str | Path,
    sae_cfg: SAEConfig,
    neurons: list[int],
    layer: int | None = None,
    *,
    allow_mismatch: bool = False,
) -> SteerTarget:
    """Check a request to clamp ``neurons`` of an SAE in LLaVA ``model``'s vision tower at
    ``layer`` (default: the SAE's) from configs only, before any weight loads.

    Raises:
        UserError: a neuron out of range, no layer, a layer out of range or after the
            deepest block LLaVA reads, a width that is not the tower's, or (without
            ``allow_mismatch``) an SAE trained on the CLS token or the token mean.
    """
    d_sae = sae_cfg.d_sae
    for k in neurons:
        if not 0 <= int(k) < d_sae:
            raise UserError(
                f"--neuron {k} is out of range: the SAE has {d_sae} neurons (0..{d_sae - 1})"
            )
    block = layer if layer is not None else sae_cfg.layer
    if block is None:
        raise UserError("the SAE config names no layer: pass --layer (a vision block)")
    name, config = _vision_tower(model)
    vision = config.vision_config  # type: ignore[attr-defined]
    n = int(vision.num_hidden_layers)
    if not -n <= int(block) < n:
        raise UserError(
            f"--layer {block} is out of range: the vision tower of {name} has {n} blocks "
            f"(0..{n - 1}, or -{n}..-1 from the end)"
        )
    index = int(block) % n
    feature = config.vision_feature_layer  # type: ignore[attr-defined]
    read = [feature] if isinstance(feature, int) else list(feature)
    deepest = max((f % (n + 1)) - 1 for f in read)
    if index > deepest:
        raise UserError(
            f"cannot steer at vision block {index} of {name}: the language model reads the "
            f"vision tower at block {deepest} (vision_feature_layer={feature}), so an edit at a "
            f"later block never reaches it; attach at a block <= {deepest}"
        )
    if sae_cfg.d_in != int(vision.hidden_size):
        raise UserError(
            f"the SAE reads {sae_cfg.d_in}-wide activations but the vision tower of {name} is "
            f"{vision.hidden_size} wide; use an SAE trained on this LLaVA's tower"
        )
    if layer is not None and sae_cfg.layer is not None and int(sae_cfg.layer) % n != index:
        log.warning("the SAE was trained on vision block %s; steering it at block %d (--layer)",
                    sae_cfg.layer, index)  # fmt: skip
    check_tokens(sae_cfg, index, allow_mismatch)
    return SteerTarget(index, n)
