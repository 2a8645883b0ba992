"""The paper's claims posed so that training, not width alone, must carry them.

The paper's forms stay (:mod:`vlmsae.demo.findings`); beside them:

- concept recovery: a trained SAE's latents detect more of the world's concepts (best single
  latent at F1 ≥ 0.5) than the raw neurons of its hook, and more than untrained SAEs do;
- width: the share of concepts detected grows with width, and so do the median and 90th
  percentile of MS over the neurons active on ≥ 16 images (the max over all neurons grows
  with width for untrained SAEs too: more draws, a larger maximum);
- Matryoshka: among the neurons whose best concept is an object of the taxonomy (neurons of
  the background and neurons that detect nothing, "mixed", are counted apart instead of as
  depth 0), the last group is deeper than the first; and the first group's neurons detect a
  coarser taxonomy level than the last group's.

Each has the untrained SAEs' value of the same statistic beside it and must clear it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmsae.demo.analysis import SAEScores
    from vlmsae.demo.config import DemoConfig
    from vlmsae.demo.findings import _Measure


def testable_claims(cfg: DemoConfig, m: _Measure, growth: Any) -> dict[str, tuple]:
    """The claims above as ``{key: (Finding, numbers)}``; ``growth(key)`` gives the
    widest − narrowest difference of ``key`` per hook × arch × seed."""
    lo_e, hi_e = min(cfg.expansions), max(cfg.expansions)
    per_run = "per hook × arch × seed"
    raw = m.nums.scores.raw_recovery or {}

    def at_k(saes: list[SAEScores]) -> list[SAEScores]:
        return [s for s in saes if s.run.k == cfg.k]

    def over_raw(saes: list[SAEScores]) -> list[float]:
        return [
            m.num(s, "concepts_detected") - raw.get(s.run.hook, {}).get("concepts_detected", 0.0)
            for s in at_k(saes)
        ]

    def mats(saes: list[SAEScores]) -> list[SAEScores]:
        return [s for s in at_k(saes) if s.run.arch == "matryoshka" and s.groups is not None]

    def last_minus_first(key: str):
        n = len(cfg.group_fractions)
        return lambda saes: [
            m.num(s, f"{key}_group{n}") - m.num(s, f"{key}_group1") for s in mats(saes)
        ]

    return {
        "concepts_over_raw": m.claim(
            "SAE latents detect more concepts (F1 ≥ 0.5) than the raw neurons of their hook",
            over_raw,
            0.0,
            "share of concepts detected, SAE − raw neurons, per SAE",
        ),
        "width_concepts": m.claim(
            "The share of concepts detected grows with expansion",
            growth("concepts_detected"),
            0.0,
            f"×{hi_e} − ×{lo_e} {per_run}",
        ),
        "width_median_ms": m.claim(
            f"Median MS (toy DINOv2) of neurons active on ≥ {cfg.min_active} images grows "
            "with expansion",
            growth("p50_ms_active_dino"),
            0.0,
            f"×{hi_e} − ×{lo_e} {per_run}",
        ),
        "width_p90_ms": m.claim(
            f"90th percentile MS (toy DINOv2) of neurons active on ≥ {cfg.min_active} images "
            "grows with expansion",
            growth("p90_ms_active_dino"),
            0.0,
            f"×{hi_e} − ×{lo_e} {per_run}",
        ),
        "matryoshka_object_depth": m.claim(
            "Matryoshka's first group is shallower than its last, among neurons detecting an "
            "object (background and mixed neurons apart)",
            last_minus_first("object_depth"),
            0.0,
            "last − first group mean LCA depth of object neurons per SAE",
        ),
        "matryoshka_level": m.claim(
            "Matryoshka's first group detects coarser taxonomy levels than its last",
            last_minus_first("object_level"),
            0.0,
            "last − first group mean level of the detected concept (0 = top) per SAE",
        ),
    }
