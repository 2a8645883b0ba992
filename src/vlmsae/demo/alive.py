"""The world the demo ran on, and how many SAE latents it keeps alive per width.

A world with few concepts leaves most latents of a wide SAE dead (the shapes world: 22
concept values), and then "max MS grows with width" has little to stand on; the emoji world
has hundreds. The ``alive`` table gives, per configuration, the share of latents active on at
least one held-out image and on at least ``min_active`` (the paper's rule), with a bootstrap
interval over seeds, beside the untrained SAE of the same width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.demo.config import DemoConfig
from vlmsae.demo.numbers import Numbers, by_config
from vlmsae.metrics.stats import bootstrap
from vlmsae.report.document import Table

if TYPE_CHECKING:
    from vlmsae.toyworld.base import World


def n_concept_values(world_name: str | World) -> int:
    """Concept values of a world: every value of its attributes but the taxonomy levels that
    group its objects (shape family; emoji group and subgroup) and the emoji world's
    ``second`` (the same emoji again). Shapes: 8 shapes + 8 colours + 2 sizes + 4
    backgrounds = 22; emoji: 341 emoji + 5 backgrounds + one or two of them = 348 (346 with
    one emoji per image). Concept recovery counts more: the taxonomy levels too."""
    from vlmsae.toyworld.worlds import get_world

    world = get_world(world_name)
    levels = world.taxonomy_levels
    skip = set(levels[: levels.index(world.object_attribute)])
    return sum(len(world.attributes[a]) for a in world.oracle_attributes if a not in skip)


def _concept_parts(world_name: str | World) -> str:
    from vlmsae.toyworld.worlds import get_world

    return get_world(world_name).concept_summary()


def describe_world(world_name: str | World) -> str:
    """One sentence naming the world, its concepts and its taxonomy."""
    from vlmsae.toyworld.worlds import get_world

    return get_world(world_name).description()


def purity_note(world_name: str | World) -> str:
    """What the label purity of a neuron's top images is measured against."""
    from vlmsae.toyworld.worlds import get_world

    return get_world(world_name).purity_note()


def _config_runs(cfg: DemoConfig, nums: Numbers) -> list[tuple[str, Any]]:
    return [
        (c, runs[0]) for c, runs in by_config(nums.scores.saes).items() if runs[0].run.k == cfg.k
    ]


def alive_intervals(cfg: DemoConfig, nums: Numbers) -> dict[str, dict[str, Any]]:
    """Per configuration (default k): the bootstrap interval over seeds of the alive share
    and of the kept share (active on >= ``cfg.min_active`` images)."""
    return {
        c: {
            key: bootstrap(nums.seed_values(c, key), seed=cfg.seed, n_boot=cfg.n_boot).to_dict()
            for key in ("alive_share", "kept_share")
        }
        for c, _ in _config_runs(cfg, nums)
    }


def alive_table(cfg: DemoConfig, nums: Numbers) -> Table:
    """Share of latents alive per hook × arch × width: mean ± std and interval over seeds."""
    rows = []
    for c, s in _config_runs(cfg, nums):
        agg = nums.configs[c]
        alive = bootstrap(nums.seed_values(c, "alive_share"), seed=cfg.seed, n_boot=cfg.n_boot)
        init = nums.baseline.get(c, {}).get("init", {}).get("alive_share", float("nan"))
        rows.append(
            [
                s.run.hook,
                s.run.arch,
                s.run.expansion,
                s.d_sae,
                agg["alive"].n,
                agg["alive"].format(1),
                agg["alive_share"].format(3),
                "–" if not np.isfinite(alive.lo) else f"[{alive.lo:.3f}, {alive.hi:.3f}]",
                agg["kept_share"].format(3),
                init,
            ]
        )
    cols = [
        "hook",
        "arch",
        "expansion",
        "latents",
        "seeds",
        "alive latents",
        "alive share",
        "alive share, 95% interval over seeds",
        f"share active on ≥ {cfg.min_active} images",
        "untrained init: alive share",
    ]
    return Table(
        "alive",
        cols,
        rows,
        "Latents alive (active on at least one held-out image) per configuration at the "
        f"default k: mean ± std over seeds and a bootstrap interval over seeds; the share "
        f"active on ≥ {cfg.min_active} images (the paper's rule for uniqueness, hierarchy and "
        "the robust max MS); the untrained SAE of the same width",
    )


def alive_note(cfg: DemoConfig, nums: Numbers) -> str:
    """How many latents stay alive per width, against how many concepts the world has."""
    n_concepts = n_concept_values(cfg.toy_world)
    configs = _config_runs(cfg, nums)
    widest = max(s.run.expansion for _, s in configs)
    shares = [nums.configs[c]["alive_share"].mean for c, s in configs if s.run.expansion == widest]
    share = float(np.mean(shares))
    alive = [int(d["alive"]) for d in nums.trained.values()]
    most = "most latents stay dead" if share < 0.5 else "most latents are alive"
    return (
        f"The {cfg.world} world has {n_concepts} concept values "
        f"({_concept_parts(cfg.toy_world)}). Latents active on at least one held-out image: "
        f"median {int(np.median(alive))} per SAE "
        f"(range {min(alive)}–{max(alive)}); at ×{widest}, {share:.0%} of the latents on "
        f"average over hooks, architectures and seeds, so {most} there (table alive, per "
        'width with intervals over seeds). "dead" is the fraction of latents silent on '
        "every held-out image."
    )
