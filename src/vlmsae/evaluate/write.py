"""``write_evaluation``: everything ``vlmsae evaluate`` computes and writes, as one output.

The numbers are computed first; the files (``summary.json``, ``summary.txt``,
``concepts.csv``, ``latents.csv``, the figures) are then written as one unit
(:func:`~vlmsae.core.outputs.writing_output`), so that a reader sees the old output whole,
the new one whole, or a one-line error: never a mix.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vlmsae.core.errors import UserError
from vlmsae.core.outputs import writing_output
from vlmsae.evaluate import report
from vlmsae.evaluate.config import EvaluateConfig

FIGURES = ("f1_hist", "probing", "recovered")
OWNS = ("summary.json", "summary.txt", "concepts.csv", "latents.csv",
        *(f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg", "pdf")))  # fmt: skip
"""The files ``vlmsae evaluate`` writes (its own earlier output may be written over)."""
_SUBSTITUTION_MISSING = (
    "--model/--data run the substitution evaluation (vlmsae.evaluate.substitution), which "
    "this build of vlmsae does not have; leave them out to evaluate concepts only"
)


def write_evaluation(
    sae: str | Path,
    activations: str | Path,
    out: str | Path,
    cfg: EvaluateConfig,
    *,
    labels: str | None = None,
    model: str | None = None,
    data: str | Path | None = None,
    substitution_args: dict[str, Any] | None = None,
    allow_mismatch: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Evaluate the SAE ``sae`` over the store ``activations`` against ``labels`` (concept
    detection and sparse probing; see :func:`~vlmsae.evaluate.run.evaluate_sae_concepts`)
    and, with ``model`` and ``data``, spliced into the model (``substitution_args`` go to
    :func:`~vlmsae.evaluate.substitution.evaluate_substitution`); write the output folder
    ``out`` and return the one-screen summary lines."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.evaluate.label_sources import load_labels
    from vlmsae.evaluate.run import evaluate_sae_concepts
    from vlmsae.metrics.fit import check_top_inputs, with_neuron_count
    from vlmsae.sae import SAE

    if (model is None) != (data is None):
        raise UserError("--model and --data go together (the substitution evaluation needs both)")
    substitution = None
    if model is not None:
        try:  # import_module reads sys.modules, even after the package got the attribute
            substitution = importlib.import_module("vlmsae.evaluate.substitution")
        except ImportError as e:
            raise UserError(_SUBSTITUTION_MISSING) from e
    store = ActivationStore(activations)
    provenance = check_top_inputs(store, sae, allow_mismatch=allow_mismatch)
    concept_labels = load_labels(store, labels)
    model_sae = SAE.load(sae).eval()
    out = Path(out)
    inputs = (sae, activations, data)
    with writing_output(out, "evaluate", owns=OWNS, inputs=inputs, overwrite=overwrite,
                        meta={"artifact": "evaluate"}) as unit:  # fmt: skip
        ev = evaluate_sae_concepts(model_sae, store, concept_labels, cfg)
        summary = {"artifact": "evaluate", "sae": str(sae), "activations": str(activations),
                   **with_neuron_count(provenance, model_sae.cfg.d_sae),
                   "concepts": ev.summary()}  # fmt: skip
        result = None
        if substitution is not None:
            result = substitution.evaluate_substitution(
                model_sae, model, data, **(substitution_args or {})
            )
            summary["substitution"] = result.to_dict()
        lines = report.summary_lines(summary)
        if result is not None:
            lines += list(result.summary_lines())
        if unit.active:
            unit.dirty = True  # the figures and tables below are written by their functions
            if result is not None:
                substitution.plot_recovered(result, out / "recovered.png")
            report.write_concepts_csv(out / "concepts.csv", ev)
            report.write_latents_csv(out / "latents.csv", ev)
            report.f1_histogram(out / "f1_hist.png", ev)
            report.probing_figure(out / "probing.png", ev)
            unit.add("concepts.csv", "latents.csv")
            drawn = FIGURES if result is not None else FIGURES[:2]  # this run's figures only
            unit.add(*(n for n in OWNS if n.split(".")[0] in drawn and (out / n).is_file()))
        unit.write_text("summary.txt", "\n".join(lines) + "\n")
        unit.write_json("summary.json", summary)
    return lines
