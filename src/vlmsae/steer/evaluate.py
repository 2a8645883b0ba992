"""Concept insertion and suppression: the three rates of the paper's poster.

Each test item is one image with its known attribute values (``facts``, e.g.
``{"shape": "star", "color": "red"}``) and a target concept ``(attribute, value)``. The
model answers a few probe questions about the image while a steering method is attached;
a judge (:mod:`vlmsae.steer.judges`) reads which value each answer names. Then

- insertion (images that do not show the concept, α pushes it in):
  ``concept`` = the answer to the target attribute's probe names the concept;
  ``followed`` = every probe is still answered by a valid value (the base prompt is
  followed) and the probes about other attributes still name the image's true values;
- suppression (images that show it, α pushes it out):
  ``concept`` = that answer no longer names the concept (removed);
  ``followed`` = the same "still answered, other attributes kept" test (unrelated concept
  kept);

and ``both`` is their conjunction. α is chosen for each method on a validation split (the
best ``both`` rate, ties to the smaller |α|) and reported on a test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from vlmsae.steer.judges import Judge
from vlmsae.steer.llava import Llava, generate

log = logging.getLogger(__name__)
KINDS = ("insert", "suppress")


@dataclass(frozen=True)
class Probe:
    """A question the model answers under steering, and the attribute it asks about."""

    question: str
    """The question, e.g. ``"What is shown in this image? Use exactly one word!"``."""
    attribute: str
    """Attribute whose value the answer should name (a key of ``facts``)."""
    one_word: bool = False
    """The question asks for exactly one word (longer answers do not follow it)."""
    max_new_tokens: int | None = None
    """Answer length limit of this question (a caption needs more tokens than a one-word
    answer); None: the limit given to :func:`evaluate_steering`."""


class Item(NamedTuple):
    """One steering test case: an image, its ground truth and the target concept."""

    image: Any
    """PIL image."""
    facts: Mapping[str, str]
    """True value of every attribute a probe asks about."""
    attribute: str
    """Attribute of the target concept."""
    value: str
    """The target concept (inserted or suppressed)."""


class Verdict(NamedTuple):
    """A judge's reading of the answers for one item."""

    concept: bool
    """Insertion: the concept appeared. Suppression: the concept was removed."""
    followed: bool
    """Insertion: base prompt followed. Suppression: unrelated concepts kept."""

    @property
    def both(self) -> bool:
        return self.concept and self.followed


class Rates(NamedTuple):
    """Fractions of items (in [0, 1]) and the count they are over."""

    concept: float
    followed: float
    both: float
    n: int

    def __str__(self) -> str:  # for logs: rounded, as percentages
        from vlmsae.core.numbers import pct

        return (
            f"concept {pct(self.concept)}, followed {pct(self.followed)}, "
            f"both {pct(self.both)}, n={self.n}"
        )


def judge_item(
    item: Item,
    answers: Mapping[str, str],
    probes: Sequence[Probe],
    candidates: Mapping[str, Sequence[str]],
    judge: Judge,
    kind: str,
) -> Verdict:
    """The verdict for one item given its answers ``{question: answer}`` (a pure function)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    named = {
        p.question: judge.name_value(
            answers[p.question], candidates[p.attribute], one_word=p.one_word
        )
        for p in probes
    }
    target = [p for p in probes if p.attribute == item.attribute]
    if not target:
        raise ValueError(f"no probe asks about the target attribute {item.attribute!r}")
    hit = any(named[p.question] == item.value for p in target)
    followed = all(named[p.question] is not None for p in probes) and all(
        named[p.question] == item.facts[p.attribute]
        for p in probes
        if p.attribute != item.attribute
    )
    return Verdict(hit if kind == "insert" else not hit, followed)


def rates(verdicts: Sequence[Verdict]) -> Rates:
    """Mean of each verdict field."""
    if not verdicts:
        return Rates(float("nan"), float("nan"), float("nan"), 0)
    arr = np.array([(v.concept, v.followed, v.both) for v in verdicts], dtype=np.float64)
    c, f, b = arr.mean(0)
    return Rates(float(c), float(f), float(b), len(verdicts))


class Evaluation(NamedTuple):
    """Result of one method at one α on a set of items."""

    rates: Rates
    verdicts: list[Verdict]
    answers: list[dict[str, str]]
    """``{question: answer}`` per item, in item order."""


def evaluate_steering(
    llava: Llava,
    attach: Callable[[str, float], Any] | None,
    alpha: float,
    items: Sequence[Item],
    probes: Sequence[Probe],
    candidates: Mapping[str, Sequence[str]],
    judge: Judge,
    kind: str,
    *,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> Evaluation:
    """Answer every probe for every item with the method attached, and judge.

    Args:
        attach: ``attach(concept value, alpha)`` returns a context manager that steers
            toward / away from that concept (see :func:`method_attacher`); None = no steering.
        alpha: steering strength passed to ``attach``.
    """
    by_concept: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_concept.setdefault(item.value, []).append(i)
    answers: list[dict[str, str]] = [{} for _ in items]
    for value, idx in by_concept.items():
        images = [items[i].image for i in idx]
        ctx = attach(value, alpha) if attach is not None else None
        try:
            for p in probes:
                limit = p.max_new_tokens or max_new_tokens
                got = generate(
                    llava, images, p.question, max_new_tokens=limit, batch_size=batch_size
                )
                for i, a in zip(idx, got, strict=True):
                    answers[i][p.question] = a
        finally:
            if ctx is not None:
                ctx.remove()
    verdicts = [
        judge_item(item, ans, probes, candidates, judge, kind)
        for item, ans in zip(items, answers, strict=True)
    ]
    return Evaluation(rates(verdicts), verdicts, answers)


def method_attacher(llava: Llava, methods: Mapping[str, Any]) -> Callable[[str, float], Any]:
    """``attach(concept, alpha)`` from ``{concept: method}`` (methods have ``.attach``)."""

    def attach(value: str, alpha: float) -> Any:
        if value not in methods:
            raise KeyError(f"no steering method for concept {value!r}")
        return methods[value].attach(llava.encoder, alpha)

    return attach


class AlphaChoice(NamedTuple):
    """An α sweep on the validation split."""

    alpha: float
    """The chosen α (best ``both`` rate; ties go to the smaller |α|)."""
    sweep: list[tuple[float, Rates]]
    """``(α, validation rates)`` for every α tried."""


def choose_alpha(sweep: Sequence[tuple[float, Rates]]) -> float:
    """The α with the best ``both`` rate, ties to the smaller |α| then the first tried."""
    if not sweep:
        raise ValueError("empty α sweep")
    best = max(
        enumerate(sweep), key=lambda ir: (np.nan_to_num(ir[1][1].both, nan=-1), -abs(ir[1][0]))
    )
    return float(best[1][0])


def select_alpha(
    llava: Llava,
    attach: Callable[[str, float], Any],
    alphas: Sequence[float],
    items: Sequence[Item],
    probes: Sequence[Probe],
    candidates: Mapping[str, Sequence[str]],
    judge: Judge,
    kind: str,
    **kwargs: Any,
) -> AlphaChoice:
    """Evaluate every α on the validation ``items`` and pick one (:func:`choose_alpha`)."""
    if not alphas:
        raise ValueError("give at least one α to try")
    sweep = []
    for a in alphas:
        ev = evaluate_steering(llava, attach, a, items, probes, candidates, judge, kind, **kwargs)
        log.info("%s α=%g: %s", kind, a, ev.rates)
        sweep.append((float(a), ev.rates))
    return AlphaChoice(choose_alpha(sweep), sweep)
