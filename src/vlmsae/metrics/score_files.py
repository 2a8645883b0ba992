"""The files of ``vlmsae score``: every neuron's Monosemanticity Score, written to a folder.

:func:`write_scores` checks its inputs fit, computes the MS of a store's neurons (or of an
SAE's codes of it, with the raw neurons beside), and writes ``scores.npy``, ``scores.csv``,
``summary.json``, ``ms_hist.png``, ``table.md`` (and ``raw_scores.npy``). The helpers here are
shared with the other metric commands (:mod:`vlmsae.metrics.artifacts`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.core.outputs import OutputUnit, writing_output

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics.ms import MSResult

log = logging.getLogger(__name__)


FIGURES = ("ms_hist.png", "ms_hist.svg", "ms_hist.pdf")
SCORE_FILES = ("scores.npy", "scores.csv", "summary.json", *FIGURES, "table.md", "raw_scores.npy")
"""What ``vlmsae score`` writes (an older output without a manifest holds only these)."""


def check_rows(store: ActivationStore, what: str) -> None:
    """Refuse a store with no rows (nothing to compute a statistic of)."""
    if len(store) == 0:
        raise UserError(f"{what} {store.dir} holds 0 rows: cache it again from a non-empty --data")


def per_image(x: Any, image_R: np.ndarray | None, aggregate: str, chunk_rows: int) -> Any:
    """One row per image: ``x`` itself, or its rows aggregated per image in memory (under
    ``torchrun``: this rank's share of the images; the metrics read no other)."""
    from vlmsae.metrics.sae_codes import aggregate_share

    if image_R is None:
        return x
    log.info("several rows per image: aggregating them per image (%s)", aggregate)
    return aggregate_share(x, image_R, aggregate, chunk_rows)


def write_scores(
    activations: Path,
    embeddings: Path,
    out: Path,
    *,
    sae: Path | None = None,
    raw: Path | None = None,
    aggregate: str = "max",
    chunk_rows: int = 8192,
    name: str | None = None,
    allow_mismatch: bool = False,
    min_active: int = 16,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every neuron of the store ``activations`` (or of the codes of the SAE ``sae`` on
    it, or a code store against the raw store ``raw``) against ``embeddings``; write the
    files to ``out`` as one output (:mod:`vlmsae.core.outputs`) and return the summary (as
    in ``summary.json``). ``sae``: any SAE ``SAE.load`` reads (folder, hub id, SAELens or
    dictionary_learning folder).

    Raises:
        UserError: the stores (or the SAE) do not fit each other (``allow_mismatch`` warns
            instead where it can), a store is empty, ``out`` holds something else (unless
            ``overwrite``), or another process writes ``out``.
    """
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.fit import check_score_inputs
    from vlmsae.metrics.ms import embedder_name

    acts_store, emb = ActivationStore(activations), ActivationStore(embeddings)
    check_rows(acts_store, "--activations")
    check_rows(emb, "--embeddings")
    image_R = image_index_of(acts_store)
    raw_store = ActivationStore(raw) if raw is not None and sae is None else None
    provenance = check_score_inputs(acts_store, emb, image_R, sae_dir=sae, raw_store=raw_store,
                                    allow_mismatch=allow_mismatch)  # fmt: skip
    summary: dict[str, Any] = {"activations": str(activations), "embeddings": str(embeddings)}
    summary["embedder"] = embedder_name(emb.manifest, Path(embeddings).name)  # MS depends on it
    summary.update({k: acts_store.manifest.get(k) for k in ("model", "hookpoint", "layer")})
    inputs = (activations, embeddings, sae, raw)
    with writing_output(out, "score", owns=SCORE_FILES, inputs=inputs, overwrite=overwrite,
                        meta={"artifact": "scores"}) as unit:  # fmt: skip
        scored = _score(summary, acts_store, emb, image_R, sae, raw_store, aggregate, chunk_rows)
        return _write(unit, scored, provenance, name, min_active)


class _Scored(NamedTuple):
    summary: dict[str, Any]
    result: MSResult
    raw_ms: np.ndarray | None
    label: str  # of the scored neurons in the histogram


def _score(
    summary: dict[str, Any],
    acts_store: ActivationStore,
    emb: ActivationStore,
    image_R: np.ndarray | None,
    sae: Path | None,
    raw_store: ActivationStore | None,
    aggregate: str,
    chunk_rows: int,
) -> _Scored:
    """MS of the neurons (and of the raw ones); adds the SAE's fields to ``summary``."""
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.ms import monosemanticity
    from vlmsae.metrics.sae_codes import image_share_rows, sae_codes_of_rows

    acts = per_image(acts_store, image_R, aggregate, chunk_rows)
    raw_acts = None
    if sae is not None:
        # encode every token (of this rank's images), then aggregate the codes per image
        span = image_share_rows(image_R, len(acts_store))
        model, codes, rec = sae_codes_of_rows(sae, acts_store, chunk_rows, span)
        codes = per_image(codes, image_R, aggregate, chunk_rows)
        summary.update(sae=str(sae), arch=model.cfg.arch, k=model.cfg.k, **rec)
        summary["expansion"] = model.cfg.d_sae // model.cfg.d_in
        summary["group_sizes"] = list(model.cfg.group_sizes)
        raw_acts, acts = acts, codes
    elif raw_store is not None:
        raw_acts = per_image(raw_store, image_index_of(raw_store), aggregate, chunk_rows)
    res = monosemanticity(acts, emb, chunk_rows=chunk_rows, progress=True)
    raw_ms = None if raw_acts is None else monosemanticity(raw_acts, emb, chunk_rows=chunk_rows).ms
    label = "SAE" if raw_acts is not None or acts_store.is_sparse else "neurons"
    return _Scored(summary, res, raw_ms, label)


def _write(
    unit: OutputUnit, scored: _Scored, provenance: dict, name: str | None, min_active: int
) -> dict[str, Any]:
    """Write the score files; the summary, completed."""
    from vlmsae.metrics.fit import with_neuron_count
    from vlmsae.metrics.maxms import max_ms_summary
    from vlmsae.metrics.ms import compare_sae_raw, summarize_ms
    from vlmsae.metrics.tables import ms_tables, tradeoff_table
    from vlmsae.report.figures import ms_histogram

    summary, res, raw_ms, label = scored
    out = unit.dir
    unit.save_npy("scores.npy", res.ms)
    lines = ["neuron,ms,n_active,max_activation"]
    lines += [
        f"{k},{'' if np.isnan(m) else f'{m:.6f}'},{n},{a:.6g}"
        for k, (m, n, a) in enumerate(zip(res.ms, res.n_active, res.max_activation, strict=True))
    ]
    unit.write_text("scores.csv", "\n".join(lines) + "\n")
    summary.update(artifact="scores", **with_neuron_count(provenance, len(res.ms)))
    summary["name"] = name or out.name
    summary["n_images"] = res.n_images
    summary["ms"] = summarize_ms(res.ms)
    summary["mean_ms"] = summary["ms"]["mean"]
    summary.update(max_ms_summary(res.ms, res.n_active, min_active))  # max_ms is the paper's
    if summary["max_ms"] is None:
        why = f"undefined: all {len(res.ms)} neurons are dead or constant on these images"
        summary["mean_ms_reason"] = summary["max_ms_reason"] = why
    hist = {label: res.ms}
    if raw_ms is not None:
        unit.save_npy("raw_scores.npy", raw_ms)
        summary["raw_ms"] = summarize_ms(raw_ms)
        try:
            summary["sae_vs_raw"] = compare_sae_raw(res.ms, raw_ms)
        except ValueError as e:  # every SAE or every raw neuron is undefined
            summary["sae_vs_raw"], summary["sae_vs_raw_reason"] = None, f"undefined: {e}"
        hist["raw"] = raw_ms
    if unit.active:
        ms_histogram(out / "ms_hist.png", hist, embedder=summary.get("embedder"))
        unit.add(*(f for f in FIGURES if (out / f).is_file()))
    unit.write_text("table.md", ms_tables([summary]) + "\n" + tradeoff_table([summary]))
    unit.write_json("summary.json", summary)
    return summary
