"""The insertion / suppression table: SAE steering vs DiffMean, α chosen on validation.

:func:`steering_table` runs the protocol of :mod:`vlmsae.steer.evaluate` for every method
(plus "no steering"), chooses α per method and kind on the validation items, reports the
test items, and :func:`write_steering_table` writes ``steering_table.md``,
``steering_table.csv``, ``alpha_sweep.csv``, ``examples.jsonl``, ``outcomes.csv`` and
``summary.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vlmsae.core.io import atomic_write_text, csv_text, write_json
from vlmsae.steer.evaluate import (
    KINDS,
    Item,
    Probe,
    evaluate_steering,
    method_attacher,
    select_alpha,
)
from vlmsae.steer.judges import Judge
from vlmsae.steer.llava import Llava

log = logging.getLogger(__name__)

RATE_NAMES = {
    "insert": ("concept appeared", "base prompt followed", "both"),
    "suppress": ("concept removed", "unrelated kept", "both"),
}


@dataclass(frozen=True)
class MethodSpec:
    """One steering method: per concept, what to attach for insertion and suppression."""

    name: str
    """Label in the table (``SAE``, ``DiffMean``)."""
    methods: Mapping[str, Mapping[str, Any]]
    """``{"insert"|"suppress": {concept value: method with .attach(encoder, alpha)}}``."""
    alphas: Mapping[str, Sequence[float]]
    """``{"insert"|"suppress": α values tried on the validation split}``."""

    def __post_init__(self) -> None:
        for kind in self.methods:
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r} in {self.name}; use {KINDS}")
            if not self.alphas.get(kind):
                raise ValueError(f"{self.name}: give α values to try for {kind!r}")


class TableRow(NamedTuple):
    """One line of the table (rates in [0, 1] on the test split)."""

    kind: str
    method: str
    alpha: float | None
    concept: float
    followed: float
    both: float
    n: int


class SteeringTable(NamedTuple):
    rows: list[TableRow]
    sweeps: list[dict[str, Any]]
    """``{"kind", "method", "alpha", "concept", "followed", "both", "n"}`` per validation run."""
    examples: list[dict[str, Any]]
    """A few test items per (kind, method): facts, target and answers."""
    outcomes: dict[tuple[str, str], list[bool]] = {}
    """``{(kind, method): [both rates' verdict per test item]}`` in item order: the same
    items for every method of a kind, so that methods can be compared item by item."""


def steering_table(
    llava: Llava,
    specs: Sequence[MethodSpec],
    val_items: Mapping[str, Sequence[Item]],
    test_items: Mapping[str, Sequence[Item]],
    probes: Sequence[Probe],
    candidates: Mapping[str, Sequence[str]],
    judge: Judge,
    *,
    n_examples: int = 4,
    **gen: Any,
) -> SteeringTable:
    """Insertion and suppression rates of each method on the test items.

    Args:
        specs: the methods to compare.
        val_items: ``{"insert"|"suppress": items}`` on which α is chosen; insertion items
            show no target concept, suppression items show it.
        test_items: the same for the reported rates.
        gen: ``max_new_tokens`` / ``batch_size`` for generation.
    """
    rows, sweeps, examples = [], [], []
    outcomes: dict[tuple[str, str], list[bool]] = {}
    for kind in KINDS:
        if kind not in test_items:
            continue
        base = evaluate_steering(
            llava, None, 0.0, test_items[kind], probes, candidates, judge, kind, **gen
        )
        rows.append(TableRow(kind, "none", None, *base.rates))
        outcomes[kind, "none"] = [v.both for v in base.verdicts]
        examples += _examples(kind, "none", None, test_items[kind], base.answers, n_examples)
        for spec in specs:
            if kind not in spec.methods:
                continue
            attach = method_attacher(llava, spec.methods[kind])
            choice = select_alpha(
                llava,
                attach,
                spec.alphas[kind],
                val_items[kind],
                probes,
                candidates,
                judge,
                kind,
                **gen,
            )
            sweeps += [
                {"kind": kind, "method": spec.name, "alpha": a, **r._asdict()}
                for a, r in choice.sweep
            ]
            ev = evaluate_steering(
                llava,
                attach,
                choice.alpha,
                test_items[kind],
                probes,
                candidates,
                judge,
                kind,
                **gen,
            )
            log.info("%s %s α=%g test: %s", kind, spec.name, choice.alpha, ev.rates)
            rows.append(TableRow(kind, spec.name, choice.alpha, *ev.rates))
            outcomes[kind, spec.name] = [v.both for v in ev.verdicts]
            examples += _examples(
                kind, spec.name, choice.alpha, test_items[kind], ev.answers, n_examples
            )
    return SteeringTable(rows, sweeps, examples, outcomes)


def _examples(kind, method, alpha, items, answers, n) -> list[dict[str, Any]]:
    return [
        {
            "kind": kind,
            "method": method,
            "alpha": alpha,
            "target": f"{it.attribute}={it.value}",
            "facts": dict(it.facts),
            "answers": ans,
        }
        for it, ans in list(zip(items, answers, strict=True))[:n]
    ]


def table_markdown(table: SteeringTable) -> str:
    """The table as markdown: one section per kind, rates in percent."""
    out = []
    for kind in KINDS:
        rows = [r for r in table.rows if r.kind == kind]
        if not rows:
            continue
        c, f, b = RATE_NAMES[kind]
        title = "Concept insertion" if kind == "insert" else "Concept suppression"
        out += [
            f"### {title}",
            "",
            f"| method | α | {c} | {f} | {b} | n |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            alpha = "–" if r.alpha is None else f"{r.alpha:g}"
            out.append(
                f"| {r.method} | {alpha} | {100 * r.concept:.1f} % | {100 * r.followed:.1f} % "
                f"| {100 * r.both:.1f} % | {r.n} |"
            )
        out.append("")
    return "\n".join(out)


def _csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    return csv_text(fields, ([row.get(f, "") for f in fields] for row in rows))


def write_steering_table(table: SteeringTable, out_dir: str | Path, **meta: Any) -> Path:
    """Write the table (markdown, CSV), the α sweeps, examples, each test item's "both"
    verdict per kind and method (``outcomes.csv``: what paired comparisons are computed
    from) and ``summary.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(TableRow._fields)
    atomic_write_text(out / "steering_table.md", table_markdown(table))
    atomic_write_text(out / "steering_table.csv", _csv([r._asdict() for r in table.rows], fields))
    atomic_write_text(out / "alpha_sweep.csv", _csv(table.sweeps, fields))
    atomic_write_text(out / "examples.jsonl", "".join(json.dumps(e) + "\n" for e in table.examples))
    outcomes = [
        {"kind": k, "method": m, "item": i, "both": int(b)}
        for (k, m), got in table.outcomes.items()
        for i, b in enumerate(got)
    ]
    atomic_write_text(out / "outcomes.csv", _csv(outcomes, ["kind", "method", "item", "both"]))
    summary = {
        "rows": [r._asdict() for r in table.rows],
        "alpha_sweep": table.sweeps,
        **meta,
    }
    write_json(out / "summary.json", summary)
    log.info("wrote the steering table to %s", out)
    return out
