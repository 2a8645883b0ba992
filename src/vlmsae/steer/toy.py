"""Steering on the toy world, end to end: the insertion / suppression table with ground truth.

:func:`toyworld_steering` loads the toy LLaVA, trains a small SAE on the vision block
LLaVA reads (or takes one), and runs :func:`vlmsae.steer.compare.compare_steering` on the
world's shapes: neurons and DiffMean directions from ``train`` images, α chosen on ``val``,
rates on ``test``. The judge is the ground truth: the one-word answer to "What is shown in
this image?" must (not) be the target shape, and the answer to "What color is the
object?" must still be the object's true colour.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from vlmsae.steer.compare import Comparison, SteerEvalConfig, compare_steering, make_items
from vlmsae.steer.evaluate import KINDS, Item, Probe
from vlmsae.steer.judges import WordJudge
from vlmsae.steer.llava import Llava, load_llava
from vlmsae.steer.neurons import block_outputs
from vlmsae.steer.steering import check_steerable
from vlmsae.steer.table import write_steering_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToySteeringConfig:
    """The toy-world steering experiment."""

    layer: int | None = None
    """Vision block to steer at; default the block LLaVA reads (the paper's choice)."""
    n_train: int = 1024
    """``train`` images: SAE training, neuron choice, DiffMean directions."""
    n_val: int = 48
    """``val`` images per kind (α selection)."""
    n_test: int = 96
    """``test`` images per kind (reported rates)."""
    expansion: int = 8
    """SAE expansion factor (when no SAE is given)."""
    k: int = 16
    """SAE TopK k."""
    steps: int = 1500
    """SAE training steps."""
    batch_size: int = 1024
    """SAE training batch size (token rows)."""
    seed: int = 0
    """World and SAE seed."""
    eval: SteerEvalConfig = field(default_factory=SteerEvalConfig)
    """α grids, steering mode and generation settings."""

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError("n_train, n_val and n_test must be >= 1")
        if min(self.expansion, self.k, self.steps, self.batch_size) < 1:
            raise ValueError("expansion, k, steps and batch_size must be >= 1")


class ToySteeringResult(NamedTuple):
    comparison: Comparison
    """Table, chosen neurons, α unit, timings."""
    layer: int
    """Vision block steered."""
    sae: Any
    """The SAE used (trained here unless one was given)."""
    seconds: dict[str, float]
    """Wall time of each phase, SAE training included."""


def toy_probes() -> list[Probe]:
    """The shape question (target) and the colour question (must stay right)."""
    from vlmsae.toyworld.world import QUESTION_COLOR, QUESTION_SHAPE

    return [Probe(QUESTION_SHAPE, "shape", one_word=True), Probe(QUESTION_COLOR, "color", True)]


def toy_candidates() -> dict[str, tuple[str, ...]]:
    from vlmsae.toyworld.world import ATTRIBUTES

    return {"shape": ATTRIBUTES["shape"], "color": ATTRIBUTES["color"]}


def toy_items(split: str, n: int, kind: str, seed: int = 0) -> list[Item]:
    """Items of ``split``: suppression targets the shape shown, insertion a random other one."""
    from vlmsae.toyworld import make_world

    images, records = make_world(split, n, seed=seed)
    facts = [{"shape": r.shape, "color": r.color} for r in records]
    return make_items(images, facts, "shape", toy_candidates()["shape"], kind, seed)


def train_toy_sae(llava: Llava, images: list, layer: int, cfg: ToySteeringConfig) -> Any:
    """A TopK SAE on every token of block ``layer`` over ``images`` (few steps)."""
    from vlmsae import SAEConfig, TrainConfig, train_sae

    acts = torch.cat([h.flatten(0, 1) for h in block_outputs(llava, images, layer)])
    sae_cfg = SAEConfig(
        d_in=acts.shape[1],
        expansion=cfg.expansion,
        sparsity="topk",
        k=cfg.k,
        model=llava.name,
        hookpoint="post_mlp_residual",
        layer=layer,
        tokens="all",
    )
    train = TrainConfig(
        sae=sae_cfg,
        steps=cfg.steps,
        batch_size=min(cfg.batch_size, len(acts)),
        seed=cfg.seed,
        warmup_steps=min(100, cfg.steps // 10),
    )
    return train_sae(acts, train).eval()


def toyworld_steering(
    out_dir: str | Path | None = None,
    cfg: ToySteeringConfig | None = None,
    *,
    llava: Llava | None = None,
    sae: Any | None = None,
) -> ToySteeringResult:
    """Run the toy-world insertion / suppression comparison and (optionally) write it.

    Args:
        out_dir: where to write the table (markdown, CSV, sweeps, examples, summary.json).
        cfg: the experiment; default :class:`ToySteeringConfig`.
        llava: a loaded toy LLaVA (default: the shipped one).
        sae: an SAE trained on block ``cfg.layer`` (default: trained here).
    """
    from vlmsae.toyworld import llava_path, make_world

    cfg = cfg or ToySteeringConfig()
    t0 = time.perf_counter()
    llava = llava or load_llava(llava_path())
    enc = llava.encoder
    layer = check_steerable(enc, max(enc.read_layers) if cfg.layer is None else cfg.layer)
    images, records = make_world("train", cfg.n_train, seed=cfg.seed)
    if sae is None:
        sae = train_toy_sae(llava, images, layer, cfg)
    seconds = {"sae": time.perf_counter() - t0}
    val = {k: toy_items("val", cfg.n_val, k, cfg.seed) for k in KINDS}
    test = {k: toy_items("test", cfg.n_test, k, cfg.seed) for k in KINDS}
    comparison = compare_steering(
        llava,
        sae,
        layer,
        images,
        [r.shape for r in records],
        val,
        test,
        toy_probes(),
        toy_candidates(),
        WordJudge(),
        cfg.eval,
    )
    seconds.update(comparison.seconds)
    if out_dir is not None:
        write_steering_table(
            comparison.table,
            out_dir,
            model=llava.name,
            config=asdict(cfg),
            layer=layer,
            alpha_unit=comparison.alpha_unit,
            seconds=seconds,
            neurons={c: n._asdict() for c, n in comparison.neurons.items()},
        )
    return ToySteeringResult(comparison, layer, sae, seconds)
