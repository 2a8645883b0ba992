"""SAE steering vs DiffMean on labelled images: the generic comparison behind the tables.

:func:`compare_steering` takes a LLaVA, an SAE at a vision block, labelled training
images (one attribute, e.g. the shape or the class), and validation / test items; it
chooses each concept's neuron from the training images (:mod:`vlmsae.steer.neurons`),
computes each concept's DiffMean direction from the same images, and runs
:func:`vlmsae.steer.table.steering_table`. The toy world (:mod:`vlmsae.steer.toy`) and
the ``steer-eval`` command on a labelled folder both call it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.steer.diffmean import DiffMeanSteering, directions_from_labels
from vlmsae.steer.evaluate import KINDS, Item, Probe
from vlmsae.steer.judges import Judge
from vlmsae.steer.llava import Llava
from vlmsae.steer.neurons import (
    ConceptNeuron,
    choose_concept_neurons,
    image_activations,
    image_codes,
)
from vlmsae.steer.steering import MODES, SAESteering, check_steerable
from vlmsae.steer.table import MethodSpec, SteeringTable, steering_table

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SteerEvalConfig:
    """α grids, steering mode and generation settings of the comparison."""

    sae_alphas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    """SAE insertion α, in multiples of the concept neurons' median peak activation on the
    training images (the paper's α = 100 is ~ this scale on CLIP ViT-L). On the toy LLaVA
    insertion needs 16-32: a shape neuron clamped at 8x its peak changed the one-word
    answer on a third of the images."""
    sae_suppress_alphas: tuple[float, ...] = (0.0, -1.0, -2.0, -4.0)
    """SAE suppression α, same units (0 switches the neuron off)."""
    diffmean_alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """DiffMean insertion α (1 adds one difference of means to every token)."""
    diffmean_suppress_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)
    """DiffMean suppression α (1 projects the direction out of every token)."""
    mode: str = "replace"
    """SAE steering mode: ``replace`` (the paper) or ``preserve`` (error-preserving)."""
    pre_zero: bool = False
    """Zero all other SAE codes before clamping."""
    top_n: int = 16
    """Top images per neuron for the neuron choice (label purity)."""
    max_new_tokens: int = 3
    """Answer length limit."""
    batch_size: int = 32
    """Images per generation batch."""
    n_examples: int = 4
    """Example generations kept per (kind, method)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        for name in ("sae_alphas", "sae_suppress_alphas", "diffmean_alphas"):
            if not getattr(self, name):
                raise ValueError(f"{name} must hold at least one α")
        if not self.diffmean_suppress_alphas:
            raise ValueError("diffmean_suppress_alphas must hold at least one α")
        if min(self.top_n, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("top_n, max_new_tokens and batch_size must be >= 1")


class Comparison(NamedTuple):
    table: SteeringTable
    neurons: dict[str, ConceptNeuron]
    """The concept neuron chosen for each concept."""
    alpha_unit: float
    """What 1.0 in ``sae_alphas`` is in SAE code units."""
    seconds: dict[str, float]
    """Wall time of each phase."""


def make_items(
    images: Sequence[Any],
    facts: Sequence[Mapping[str, str]],
    attribute: str,
    values: Sequence[str],
    kind: str,
    seed: int = 0,
) -> list[Item]:
    """Items for one kind: suppression targets the value shown, insertion a random other one."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    rng = np.random.default_rng([seed, len(images), KINDS.index(kind)])
    items = []
    for im, f in zip(images, facts, strict=True):
        target = f[attribute]
        if kind == "insert":
            others = [v for v in values if v != f[attribute]]
            if not others:
                raise ValueError(f"only one value of {attribute!r}: nothing to insert")
            target = str(rng.choice(others))
        items.append(Item(im, dict(f), attribute, target))
    return items


def compare_steering(
    llava: Llava,
    sae: SAE,
    layer: int,
    train_images: Sequence[Any],
    train_labels: Sequence[str],
    val_items: Mapping[str, Sequence[Item]],
    test_items: Mapping[str, Sequence[Item]],
    probes: Sequence[Probe],
    candidates: Mapping[str, Sequence[str]],
    judge: Judge,
    cfg: SteerEvalConfig | None = None,
) -> Comparison:
    """Choose neurons and DiffMean directions on the training images, then compare.

    Args:
        train_labels: the target attribute's value for every training image.
        val_items: ``{"insert"|"suppress": items}`` (see :func:`make_items`) on which α is
            chosen; it needs every kind of ``test_items``.
        test_items: the same for the reported rates. Every concept either targets gets a
            neuron and a DiffMean direction.
    """
    cfg = cfg or SteerEvalConfig()
    layer = check_steerable(llava.encoder, layer)
    missing = [kind for kind in test_items if kind not in val_items]
    if missing:
        raise ValueError(
            f"no validation items for {missing[0]!r}: α is chosen on val_items, so give "
            f"them for every kind in test_items ({sorted(test_items)})"
        )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    labels = np.asarray(train_labels).astype(str)
    # every concept α is tried on (validation) or reported on (test) needs its methods
    items = [*val_items.values(), *test_items.values()]
    concepts = sorted({it.value for its in items for it in its})
    codes_NS = image_codes(llava, sae, train_images, layer)
    neurons = choose_concept_neurons(codes_NS, labels, concepts, top_n=cfg.top_n)
    unit = float(np.median([codes_NS[:, n.neuron].max() for n in neurons.values()]))
    if not unit > 0:
        raise ValueError("the chosen concept neurons never fire on the training images")
    acts_ND = image_activations(llava, train_images, layer)
    directions = directions_from_labels(acts_ND, labels, concepts)
    seconds["neurons_and_directions"] = time.perf_counter() - t0
    for c, n in neurons.items():
        log.info("concept %s -> neuron %d (purity %.2f)", c, n.neuron, n.purity)

    def sae_method(n: ConceptNeuron) -> SAESteering:
        return SAESteering(sae, layer, (n.neuron,), cfg.mode, cfg.pre_zero)

    specs = [
        MethodSpec(
            "SAE",
            {kind: {c: sae_method(n) for c, n in neurons.items()} for kind in KINDS},
            {
                "insert": [unit * a for a in cfg.sae_alphas],
                "suppress": [unit * a for a in cfg.sae_suppress_alphas],
            },
        ),
        MethodSpec(
            "DiffMean",
            {
                kind: {c: DiffMeanSteering(directions[c], layer, kind) for c in concepts}
                for kind in KINDS
            },
            {"insert": cfg.diffmean_alphas, "suppress": cfg.diffmean_suppress_alphas},
        ),
    ]
    t0 = time.perf_counter()
    table = steering_table(
        llava,
        specs,
        val_items,
        test_items,
        probes,
        candidates,
        judge,
        n_examples=cfg.n_examples,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )
    seconds["table"] = time.perf_counter() - t0
    return Comparison(table, neurons, unit, seconds)
