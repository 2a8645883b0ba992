"""Judges: which concept value does an answer name?

A judge reads one answer to a question about one attribute (``shape``, ``color``, a
class name, ...) and returns the candidate value it names, or None when the answer names
none or several of them (or breaks the question's template). The evaluation protocols in
:mod:`vlmsae.steer.evaluate` are built on this one function, so the ground-truth judge of
the toy world and the judges for real models are interchangeable:

- :class:`WordJudge`: exact word match against the candidate names (the toy world's
  ground-truth judge with ``one_word=True`` questions; string match on real models).
- :class:`ClipJudge`: the candidate whose CLIP text embedding (``"a photo of a {value}"``)
  is most similar to the answer's, for free-form answers of real models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (punctuation dropped)."""
    return _WORD.findall(text.lower())


class Judge(Protocol):
    """Names the candidate value an answer gives, or None."""

    def name_value(self, answer: str, candidates: Sequence[str], *, one_word: bool) -> str | None:
        """The value of ``candidates`` that ``answer`` names, or None.

        ``one_word``: the question asked for exactly one word; an answer of several words
        does not follow it and names nothing.
        """
        ...


class WordJudge:
    """String match: the one candidate whose words occur in the answer.

    A multi-word candidate (``"traffic light"``) matches when its words occur
    consecutively. An answer that matches no candidate or more than one names nothing.
    """

    def name_value(self, answer: str, candidates: Sequence[str], *, one_word: bool) -> str | None:
        got = words(answer)
        if one_word and len(got) != 1:
            return None
        text = f" {' '.join(got)} "
        hits = [c for c in candidates if f" {' '.join(words(c))} " in text]
        return hits[0] if len(hits) == 1 else None


class ClipJudge:
    """CLIP text similarity: the candidate whose prompt is nearest to the answer.

    Args:
        embed_texts: maps a list of strings to unit-norm embeddings ``[n, E]`` (e.g.
            :meth:`vlmsae.steer.score.ClipEmbedder.embed_texts`).
        template: prompt for a candidate value.
        margin: the best candidate must beat the second by this cosine margin, else None.
    """

    def __init__(
        self,
        embed_texts: Callable[[list[str]], Any],
        template: str = "a photo of a {}",
        margin: float = 0.0,
    ) -> None:
        self.embed_texts, self.template, self.margin = embed_texts, template, margin
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def name_value(self, answer: str, candidates: Sequence[str], *, one_word: bool) -> str | None:
        got = words(answer)
        if not got or (one_word and len(got) != 1):
            return None
        key = tuple(candidates)
        if key not in self._cache:
            prompts = [self.template.format(c) for c in candidates]
            self._cache[key] = np.asarray(self.embed_texts(prompts), dtype=np.float32)
        cand_CE = self._cache[key]
        ans_E = np.asarray(self.embed_texts([answer]), dtype=np.float32)[0]
        sims = cand_CE @ ans_E
        order = np.argsort(-sims)
        if len(order) > 1 and sims[order[0]] - sims[order[1]] < self.margin:
            return None
        return candidates[int(order[0])]
