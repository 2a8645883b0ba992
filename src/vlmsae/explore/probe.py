"""The paper's qualitative steering probe for the neuron pages.

LLaVA is shown a plain white image and asked "What is shown in this image?", once without
steering and once per α with one SAE neuron clamped to α on every token of the vision block
the SAE was trained on (:func:`vlmsae.steer.steering.steer_sae`). α is given relative to the
neuron's largest activation over the explored images, so one setting fits every neuron.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.core.errors import UserError

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)
PAPER_PROMPT = "What is shown in this image?"
NEEDS_MS = (
    "choosing the most monosemantic neurons to steer needs MS: give --scores (or "
    "--embeddings), or name the neurons with --steer-neurons 3,17"
)


@dataclass(frozen=True)
class ProbeConfig:
    """Which neurons are probed and how."""

    n_neurons: int = 4
    """Probe the most monosemantic neurons (highest MS), this many."""
    neurons: tuple[int, ...] | None = None
    """Probe exactly these neurons instead."""
    factors: tuple[float, ...] = (2.0, 8.0, 32.0)
    """Clamp values α as multiples of the neuron's largest activation."""
    prompt: str = PAPER_PROMPT
    """Question of the steering probe (the paper's)."""
    mode: str = "replace"
    """``replace`` (the paper) or ``preserve`` (error-preserving)."""
    image_size: int = 224
    """Side of the white image, pixels (the processor resizes it)."""
    max_new_tokens: int = 16
    """Answer length limit."""

    def __post_init__(self) -> None:
        if self.n_neurons < 1 or self.max_new_tokens < 1 or self.image_size < 1:
            raise ValueError("n_neurons, max_new_tokens and image_size must be >= 1")
        if not self.factors:
            raise ValueError("factors must hold at least one multiple of the max activation")


def white_image(size: int = 224) -> Any:
    """A plain white RGB image, the paper's probe."""
    from PIL import Image

    return Image.new("RGB", (size, size), (255, 255, 255))


def probe_neurons(
    columns: dict[str, Any], n_neurons: int, cfg: ProbeConfig, min_active: int = 1
) -> list[int]:
    """The neurons to probe: ``cfg.neurons``, else the ``cfg.n_neurons`` highest MS (the
    first MS column) among neurons active on >= ``min_active`` images (MS undefined never
    chosen): a neuron firing on two images scores MS 1.0 and says nothing."""
    if cfg.neurons is not None:
        bad = [k for k in cfg.neurons if not 0 <= k < n_neurons]
        if bad:
            raise UserError(
                f"--steer-neurons {bad[0]} is out of range: the SAE has {n_neurons} neurons "
                f"(ids 0..{n_neurons - 1})"
            )
        return list(dict.fromkeys(int(k) for k in cfg.neurons))
    if "ms" not in columns:
        raise UserError(NEEDS_MS)
    ms = np.asarray(columns["ms"], float)
    alive = np.asarray(columns["max_act"], float) > 0
    if "n_active" in columns:
        alive &= np.asarray(columns["n_active"], float) >= max(min_active, 1)
    score = np.where(alive & np.isfinite(ms), ms, -np.inf)
    order = np.argsort(-score, kind="stable")[: cfg.n_neurons]
    chosen = [int(k) for k in order if np.isfinite(score[k])]
    if not chosen:
        raise UserError(
            f"no neuron with an MS is active on >= {min_active} images: nothing to probe; "
            "lower --min-active or name the neurons with --steer-neurons 3,17"
        )
    if len(chosen) < cfg.n_neurons:
        log.warning("only %d neurons with an MS are active on >= %d images: probing those",
                    len(chosen), min_active)  # fmt: skip
    return chosen


def steering_probe(
    llava: Any,
    sae: SAE,
    layer: int,
    max_act: dict[int, float],
    cfg: ProbeConfig,
) -> tuple[str, dict[int, list[list[Any]]]]:
    """The unsteered answer, and per neuron ``[[factor, α, answer], ...]`` with the neuron
    clamped to ``α = factor × max_act[neuron]`` at block ``layer``."""
    from vlmsae.steer.llava import generate
    from vlmsae.steer.steering import steer_sae

    image = white_image(cfg.image_size)
    ask = {"max_new_tokens": cfg.max_new_tokens}
    base = generate(llava, image, cfg.prompt, **ask)
    out: dict[int, list[list[Any]]] = {}
    for k, top in max_act.items():
        rows = []
        for f in cfg.factors:
            alpha = float(f) * float(top)
            with steer_sae(llava.encoder, sae, layer, {k: alpha}, mode=cfg.mode):
                rows.append([float(f), alpha, generate(llava, image, cfg.prompt, **ask)])
        out[k] = rows
        log.info("neuron %d on a white image: %s", k, [r[2] for r in rows])
    return base, out


def load_for_probe(model: str | Path, sae: SAE, device: str = "cpu") -> tuple[Any, int]:
    """LLaVA ``model`` and the vision block to steer at (the SAE's layer), checked to fit."""
    from vlmsae.steer.llava import load_llava
    from vlmsae.steer.steering import check_steerable

    if getattr(sae.cfg, "layer", None) is None:
        raise UserError(
            "--llava needs an SAE trained on a block of LLaVA's vision tower, but the SAE "
            "config names no layer; train it with --layer (or on a store that records one)"
        )
    llava = load_llava(str(model), device=device)
    if sae.cfg.d_in != llava.encoder.d_model:
        raise UserError(
            f"the SAE reads {sae.cfg.d_in}-wide activations but the vision tower of --llava "
            f"{model} is {llava.encoder.d_model} wide; give the LLaVA whose tower the SAE "
            "was trained on"
        )
    try:
        layer = check_steerable(llava.encoder, int(sae.cfg.layer))
    except ValueError as e:
        raise UserError(str(e)) from e
    return llava, layer
