"""The report's validity sections: did the SAEs converge, do they recover concepts.

Written before the findings are read (``docs/fidelity.md``): the recipe's steps were chosen
from the convergence measurement, never from whether a finding reproduces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmsae.demo.config import DemoConfig
from vlmsae.demo.convergence import convergence, convergence_note, convergence_table
from vlmsae.demo.numbers import Numbers
from vlmsae.demo.recovery_report import (
    groups_table,
    ms_embedders_table,
    recovery_figure,
    recovery_intervals,
    recovery_table,
)

if TYPE_CHECKING:
    from vlmsae.report.document import Report


def add_validity_sections(report: Report, cfg: DemoConfig, nums: Numbers) -> dict[str, Any]:
    """Add the convergence and concept-recovery sections; return their numbers for
    ``summary.json`` (``convergence``, ``concept_recovery``, ``raw_recovery``)."""
    conv = convergence(cfg, [s.run for s in nums.scores.saes])
    sec = report.section("Did the SAEs converge?")
    sec.paragraphs.append(convergence_note(conv))
    sec.tables.append(convergence_table(conv))
    sec = report.section("Concept recovery: trained against untrained SAEs and raw neurons")
    sec.paragraphs.append(
        "The main check that an SAE learned something: how many of the world's concepts a "
        "single latent detects, how well a few latents probe them, and how much of the model's "
        "behaviour survives with the SAE spliced in. An untrained SAE of the same width and k "
        "gives the level that width alone reaches."
    )
    sec.tables += [recovery_table(cfg, nums), groups_table(cfg, nums)]
    sec.figures.append(recovery_figure(cfg, nums))
    sec = report.section("MS under three embedders")
    sec.paragraphs.append(
        "The paper scores MS with DINOv2, a model independent of the one decomposed. Here the "
        "world's toy DINOv2 (trained self-supervised on images alone) plays that part and "
        "gives every finding's MS; the toy CLIP's own embedding (the model scoring itself) "
        "and the oracle (the true attributes) are shown beside it."
    )
    sec.tables.append(ms_embedders_table(cfg, nums))
    return {
        "convergence": conv,
        "concept_recovery": recovery_intervals(cfg, nums),
        "raw_recovery": nums.scores.raw_recovery,
    }
