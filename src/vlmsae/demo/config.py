"""Configuration of ``vlmsae demo``: the paper's experiments at toy scale."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlmsae.sae.config import PAPER_GROUP_FRACTIONS

if TYPE_CHECKING:
    from vlmsae.toyworld.base import World

HOOK_PROJECTION = "proj"
"""Name of the toy CLIP's final image embedding (``post_projection``) among the hooks."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs. The defaults take about 20 minutes on 2 quiet CPU cores (SAEs
    trained until validation R² stops improving); ``quick()`` shrinks every axis for tests
    and CI."""

    out_dir: str = "runs/demo"
    """Where everything is written (``README.md`` and ``index.html`` at the top)."""
    n_train: int | None = None
    """Toy-world training images whose CLS activations train the SAEs (None: the world's
    default, ``World.demo_images``: 16,000 emoji / 8,000 shapes). The emoji world has 341
    classes: 6,000 held-out images show each emoji about 18 times as the main one (26 times
    in all), so a neuron of one emoji can pass the paper's 16-image rule (2,000 would show it
    6 times); 16,000 training images show each about 47 times. SAE training time does not
    depend on them (fixed steps)."""
    n_test: int | None = None
    """Held-out images: MS, top images, hierarchy and R² are measured on them (None: the
    world's default, 6,000 emoji / 2,000 shapes)."""
    layers: tuple[int, ...] = (4,)
    """Toy-CLIP blocks cached (``post_mlp_residual``, CLS token); the projection is added.
    Block 2 left the default when the SAEs were trained to convergence: the 20-minute budget
    holds two hooks × 3 seeds at 3,000 steps, not three (``docs/fidelity.md``)."""
    archs: tuple[str, ...] = ("batchtopk", "matryoshka")
    """SAE architectures of the Table."""
    expansions: tuple[int, ...] = (1, 4, 16)
    """Expansion factors of the Table."""
    k: int = 4
    """Active latents per image: the paper's k=20 at width 1024, scaled to width 128."""
    k_sweep: tuple[int, ...] = (1, 4, 16)
    """K values of the sparsity / reconstruction trade-off (BatchTopK, largest expansion
    below 16, last layer)."""
    group_fractions: tuple[float, ...] = PAPER_GROUP_FRACTIONS
    """Matryoshka groups (the paper's)."""
    steps: int = 3000
    """SAE training steps (at batch 256: 48 epochs of 16,000 emoji images). Chosen by the
    convergence measurement (``docs/fidelity.md``): at 800 steps and the paper's learning
    rate validation R² was still rising; at 3,000 steps and 4 × the rate it changes by less
    than ``converge_tol`` over the last quarter (the report checks it per configuration)."""
    batch_size: int = 256
    """SAE training batch size."""
    lr_scale: float = 4.0
    """The paper's learning rate (``2e-4 / sqrt(d_sae / 2**14)``) times this. The paper's
    rate is set for 110,000 steps; at the demo's few thousand, 4 × reaches in 1,000 steps the
    validation R² the paper's rate reaches in 1,800 and then stops improving
    (``docs/fidelity.md``). 1 is the paper's recipe."""
    n_grid: int = 4
    """Neurons shown in each of the most / least monosemantic grids."""
    top_n: int = 16
    """Highest-activating images kept per neuron."""
    steer: bool = True
    """Run the steering section on the toy LLaVA."""
    steer_train: int = 1024
    """Training images of the steering SAE (every token of LLaVA's vision block)."""
    steer_test: int = 96
    """Test images per protocol (insertion, suppression); a quarter of it for α choice."""
    steer_steps: int = 1500
    """Training steps of the steering SAE."""
    steer_expansion: int = 8
    """Expansion of the steering SAE (TopK, k 16, on the toy LLaVA's vision tokens)."""
    steer_seeds: int = 3
    """Steering replicates (seeds ``seed, seed + 1, …``): each draws other target emoji,
    another steering SAE and other images; rates are pooled over them with intervals."""
    converge_tol: float = 0.01
    """An SAE has converged where its validation R² changed by less than this over the last
    quarter of training (measured at log points, reported per configuration)."""
    subst_images: int = 500
    """Held-out images of the substitution check (the toy CLIP with each SAE at the default
    k spliced in: fractions recovered); 0 skips it."""
    seed: int = 0
    """Seed of the world; the SAEs are trained with seeds ``seed, seed + 1, …``."""
    seeds: int = 3
    """SAEs trained per configuration (different initialisation and data order): every
    number of the findings and the tables is a mean ± std or an interval over them."""
    min_active: int = 16
    """The paper's rule: neurons active on fewer images (16th top activation 0) leave
    uniqueness, hierarchy, the robust max MS and the "most monosemantic" grids."""
    workers: int = 2
    """Processes that train SAEs side by side (one core each; 1 trains in this process)."""
    n_boot: int = 1000
    """Bootstrap resamples of every interval (seeded with ``seed``)."""
    world: str = "emoji"
    """The toy world the demo runs on: ``emoji`` (341 emoji under Unicode's taxonomy) or
    ``shapes`` (22 concept values; the demo before the emoji world)."""
    objects: int | None = None
    """Emoji world: at most this many emoji per image, 1 or 2 (None: the world's default, 2:
    half the images show a second emoji). The default run reports the two-emoji regime, the
    one whose truth needed the ``objects`` factor (``docs/fidelity.md``); ``--objects 1``
    runs the one-emoji regime, whose truth is exact by construction. The toy models are the
    same (trained on the two-emoji world); steering always uses it."""
    models_dir: str | None = None
    """Toy-world models to use (a ``vlmsae toyworld build`` output); default the shipped ones."""
    embedder: str | None = None
    """The independent image embedder MS is scored with (the paper's DINOv2): a model
    folder, hub id or alias (None: the world's toy DINOv2, ``toyworld:WORLD/dino``, or
    ``dino`` in ``models_dir``). The toy CLIP's own embedding (the model being decomposed)
    and the oracle are scored beside it."""

    def __post_init__(self) -> None:
        from vlmsae.toyworld.worlds import WORLDS, get_world

        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        n_train, n_test = get_world(self.world, objects=self.objects).demo_images
        if self.n_train is None:  # resolved once, at construction: the config stays frozen
            object.__setattr__(self, "n_train", n_train)
        if self.n_test is None:
            object.__setattr__(self, "n_test", n_test)
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} is smaller than batch_size={self.batch_size}")
        if self.n_test < 2 * self.top_n:
            raise ValueError(f"n_test={self.n_test} must be at least 2 × top_n={self.top_n}")
        if not self.layers or not self.expansions or not self.archs:
            raise ValueError("layers, expansions and archs must each name at least one value")
        if any(k < 1 for k in (self.k, *self.k_sweep)):
            raise ValueError("k and every k_sweep value must be >= 1")
        if self.seeds < 1 or self.steer_seeds < 1:
            raise ValueError(
                f"seeds and steer_seeds must be >= 1, got {self.seeds} and {self.steer_seeds}"
            )
        if not 0 <= self.min_active <= self.top_n:
            raise ValueError(
                f"min_active must be in [0, top_n={self.top_n}], got {self.min_active}"
            )

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The SAE seeds: ``seed, seed + 1, …`` (``seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.seeds))

    @property
    def steer_seed_list(self) -> tuple[int, ...]:
        """The steering seeds: ``seed, seed + 1, …`` (``steer_seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.steer_seeds))

    @property
    def toy_world(self) -> World:
        """The world the demo runs on, with its options (``objects``)."""
        from vlmsae.toyworld.worlds import get_world

        return get_world(self.world, objects=self.objects)

    @property
    def hooks(self) -> tuple[str, ...]:
        """Hook names: ``layer_L`` for each block, then ``proj``."""
        return (*(f"layer_{layer}" for layer in self.layers), HOOK_PROJECTION)

    @classmethod
    def quick(cls, out_dir: str = "runs/demo-quick", **overrides: object) -> DemoConfig:
        """A reduced run (about a minute): fewer images, hooks, widths and steps."""
        small = dict(
            out_dir=out_dir,
            n_train=3_000,
            n_test=600,
            layers=(4,),
            expansions=(1, 4),
            k_sweep=(1, 4),
            steps=300,
            batch_size=256,
            n_grid=2,
            steer_train=256,
            steer_test=24,
            steer_steps=300,
            steer_seeds=2,
            seeds=2,
            subst_images=200,
        )
        return cls(**{**small, **overrides})

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
