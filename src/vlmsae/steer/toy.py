"""Steering on a toy world, end to end: the insertion / suppression table with ground truth.

:func:`toyworld_steering` loads the world's toy LLaVA, trains a small SAE on the vision
block LLaVA reads (or takes one), and runs :func:`vlmsae.steer.compare.compare_steering`
on the world's target concepts (the shapes; in the emoji world, a seeded subset of the
emoji): neurons and DiffMean directions from ``train`` images, α chosen on ``val``, rates on
``test``. The judge is the ground truth: the one-word answer to "What is shown in this
image?" must (not) be the target, and a second probe must still be answered right (the
colour in the shapes world, the caption's background in the emoji world; see
:mod:`vlmsae.steer.toy_tasks`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from vlmsae.steer.compare import Comparison, SteerEvalConfig, compare_steering
from vlmsae.steer.evaluate import KINDS
from vlmsae.steer.judges import WordJudge
from vlmsae.steer.llava import Llava, load_llava
from vlmsae.steer.neurons import block_outputs
from vlmsae.steer.steering import check_steerable
from vlmsae.steer.table import write_steering_table
from vlmsae.steer.toy_tasks import (
    steering_targets,
    toy_candidates,
    toy_items,
    toy_probes,
    train_set,
)
from vlmsae.toyworld.worlds import DEFAULT_WORLD, get_world

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

__all__ = [
    "ToySteeringConfig",
    "ToySteeringResult",
    "toy_candidates",
    "toy_items",
    "toy_probes",
    "toyworld_steering",
    "train_toy_sae",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToySteeringConfig:
    """The toy-world steering experiment."""

    world: str = DEFAULT_WORLD
    """Toy world: ``shapes`` (every shape is a target) or ``emoji``."""
    n_targets: int = 8
    """Emoji world: target emoji, drawn by ``seed`` one per Unicode group in turn."""
    n_per_target: int = 32
    """Emoji world: ``train`` images added per target (as the main emoji) so that its
    neuron (purity of ``eval.top_n`` top images) and DiffMean direction have data."""
    models_dir: str | None = None
    """Toy models folder (with ``llava/``); default the world's shipped models."""
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
        if self.n_per_target < self.eval.top_n:
            raise ValueError(
                f"n_per_target={self.n_per_target} must be >= eval.top_n={self.eval.top_n}: "
                "a target's neuron is chosen by the purity of its top images"
            )
        world = get_world(self.world)  # an unknown world is refused here
        n_values = len(world.attributes[world.object_attribute])
        if not world.steer_every_object and not 2 <= self.n_targets <= n_values:
            raise ValueError(
                f"n_targets must be in [2, {n_values}] (insertion needs another target), "
                f"got {self.n_targets}"
            )


class ToySteeringResult(NamedTuple):
    comparison: Comparison
    """Table, chosen neurons, α unit, timings."""
    layer: int
    """Vision block steered."""
    sae: Any
    """The SAE used (trained here unless one was given)."""
    seconds: dict[str, float]
    """Wall time of each phase, SAE training included."""


def train_toy_sae(llava: Llava, images: list, layer: int, cfg: ToySteeringConfig) -> Any:
    """A TopK SAE on every token of block ``layer`` over ``images`` (few steps)."""
    from vlmsae.sae import SAEConfig
    from vlmsae.train import TrainConfig, train_sae

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
    sae: SAE | None = None,
) -> ToySteeringResult:
    """Run the toy-world insertion / suppression comparison and (optionally) write it.

    Args:
        out_dir: where to write the table (markdown, CSV, sweeps, examples, summary.json).
        cfg: the experiment; default :class:`ToySteeringConfig`.
        llava: a loaded toy LLaVA (default: the world's, from ``cfg.models_dir``).
        sae: an SAE trained on block ``cfg.layer`` (default: trained here).
    """
    from vlmsae.toyworld import llava_path

    cfg = cfg or ToySteeringConfig()
    world = get_world(cfg.world)
    t0 = time.perf_counter()
    llava = llava or load_llava(llava_path(cfg.models_dir, world=world.name))
    enc = llava.encoder
    layer = check_steerable(enc, max(enc.read_layers) if cfg.layer is None else cfg.layer)
    targets = steering_targets(world, cfg.n_targets, cfg.seed)
    images, labels = train_set(world, cfg.n_train, targets, cfg.n_per_target, cfg.seed)
    if sae is None:
        sae = train_toy_sae(llava, images, layer, cfg)
    seconds = {"sae": time.perf_counter() - t0}
    val = {k: toy_items("val", cfg.n_val, k, cfg.seed, world, targets) for k in KINDS}
    test = {k: toy_items("test", cfg.n_test, k, cfg.seed, world, targets) for k in KINDS}
    comparison = compare_steering(
        llava,
        sae,
        layer,
        images,
        labels,
        val,
        test,
        toy_probes(world),
        toy_candidates(world),
        WordJudge(),
        cfg.eval,
    )
    seconds.update(comparison.seconds)
    if out_dir is not None:
        write_steering_table(
            comparison.table,
            out_dir,
            model=llava.name,
            world=world.name,
            targets=list(targets),
            n_train_images=len(images),
            config=asdict(cfg),
            layer=layer,
            alpha_unit=comparison.alpha_unit,
            seconds=seconds,
            neurons={c: n._asdict() for c, n in comparison.neurons.items()},
        )
    return ToySteeringResult(comparison, layer, sae, seconds)
