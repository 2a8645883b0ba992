"""Choose the SAE neuron of a concept from data (never by hand).

The activations of a neuron on an image are pooled over the image's tokens (max by
default: a shape neuron fires on the object's patches only). For a concept ``c`` (one
value of a labelled attribute), a neuron's *purity* is the fraction of its ``top_n``
highest-activating images that show ``c`` (images where it is silent count as misses).
The concept neuron is the purest one; ties go to the larger *selectivity* (mean
activation on images with ``c`` minus mean on the rest, over the neuron's largest
activation). Alternatively rank by a Monosemanticity Score among the neurons whose
top images are mostly ``c`` (``method="ms"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from vlmsae.steer.llava import Llava

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

POOLS = ("max", "mean")


class ConceptNeuron(NamedTuple):
    """The neuron chosen for one concept and why."""

    concept: str
    neuron: int
    purity: float
    """Fraction of the neuron's top images that show the concept."""
    selectivity: float
    """(mean act. on concept images − mean on others) / max act., in [-1, 1]."""
    ms: float
    """Its Monosemanticity Score if one was given, else NaN."""


def top_image_purity(acts_NS: np.ndarray, labels_N: np.ndarray, value: Any, top_n: int):
    """``[S]`` fraction of each neuron's ``top_n`` images labelled ``value`` (a pure function;
    images with zero activation are never counted as hits)."""
    acts = np.asarray(acts_NS, dtype=np.float32)
    top_n = min(top_n, len(acts))
    top_nS = np.argpartition(-acts, top_n - 1, axis=0)[:top_n]
    hit_nS = (np.asarray(labels_N)[top_nS] == value) & (np.take_along_axis(acts, top_nS, 0) > 0)
    return hit_nS.mean(0)


def selectivity(acts_NS: np.ndarray, mask_N: np.ndarray) -> np.ndarray:
    """``[S]`` (mean on ``mask`` − mean off it) / max activation; 0 for silent neurons."""
    acts = np.asarray(acts_NS, dtype=np.float64)
    mask = np.asarray(mask_N, dtype=bool)
    if mask.all() or not mask.any():
        raise ValueError("selectivity needs images with and without the concept")
    diff = acts[mask].mean(0) - acts[~mask].mean(0)
    peak = np.abs(acts).max(0)
    return np.divide(diff, peak, out=np.zeros_like(diff), where=peak > 0)


def choose_concept_neurons(
    acts_NS: np.ndarray,
    labels_N: Sequence[Any],
    concepts: Sequence[str] | None = None,
    *,
    top_n: int = 16,
    method: str = "purity",
    ms_S: np.ndarray | None = None,
) -> dict[str, ConceptNeuron]:
    """The concept neuron of each concept (each label value by default).

    Args:
        acts_NS: per-image neuron activations (e.g. :func:`image_codes`).
        labels_N: the label of every image (one attribute, e.g. the shape).
        concepts: label values to find neurons for; default every value present.
        top_n: top images per neuron for the purity.
        method: ``"purity"`` or ``"ms"`` (needs ``ms_S``: the highest MS among neurons with
            purity > 0.5; falls back to purity when no neuron qualifies).
    """
    acts = np.asarray(acts_NS, dtype=np.float32)
    labels = np.asarray(labels_N).astype(str)
    if acts.ndim != 2 or len(acts) != len(labels):
        raise ValueError(f"need acts [N, S] and N labels; got {acts.shape} and {len(labels)}")
    if method not in ("purity", "ms"):
        raise ValueError(f"unknown method {method!r}; choose 'purity' or 'ms'")
    if method == "ms" and (ms_S is None or len(ms_S) != acts.shape[1]):
        raise ValueError("method='ms' needs ms_S: one Monosemanticity Score per neuron")
    concepts = [str(c) for c in (np.unique(labels) if concepts is None else concepts)]
    ms = np.full(acts.shape[1], np.nan) if ms_S is None else np.asarray(ms_S, np.float64)
    chosen = {}
    for c in concepts:
        if not (labels == c).any():
            raise ValueError(f"no image is labelled {c!r}: cannot choose its neuron")
        purity = top_image_purity(acts, labels, c, top_n)
        select = selectivity(acts, labels == c)
        if method == "ms" and (purity > 0.5).any():
            score = np.where(purity > 0.5, np.nan_to_num(ms, nan=-np.inf), -np.inf)
            k = int(np.lexsort((select, score))[-1])
        else:
            k = int(np.lexsort((select, purity))[-1])
        chosen[c] = ConceptNeuron(str(c), k, float(purity[k]), float(select[k]), float(ms[k]))
    return chosen


@torch.inference_mode()
def block_outputs(llava: Llava, images: Sequence[Any], layer: int, batch_size: int = 32):
    """Yield ``[B, T, D]`` float32 block outputs of the vision tower for batches of images."""
    enc = llava.encoder
    index = enc.layer_index(layer)
    for lo in range(0, len(images), batch_size):
        pixels = enc.preprocess(images[lo : lo + batch_size])
        yield enc.capture(pixels, [index])[index].float()


@torch.inference_mode()
def image_codes(
    llava: Llava, sae: SAE, images: Sequence[Any], layer: int, *, pool: str = "max", **kw: Any
) -> np.ndarray:
    """``[N, S]`` SAE codes at block ``layer`` pooled over each image's tokens."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
    out = []
    for h_BTD in block_outputs(llava, images, layer, **kw):
        z_BTS = sae.encode(h_BTD.to(next(sae.parameters()).dtype)).float()
        out.append((z_BTS.amax(1) if pool == "max" else z_BTS.mean(1)).cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def image_activations(llava: Llava, images: Sequence[Any], layer: int, **kw: Any) -> np.ndarray:
    """``[N, D]`` block-``layer`` outputs averaged over each image's tokens (for DiffMean)."""
    return np.concatenate(
        [h.mean(1).cpu().numpy() for h in block_outputs(llava, images, layer, **kw)]
    )
