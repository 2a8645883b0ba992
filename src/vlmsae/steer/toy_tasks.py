"""What steering asks of each toy world: target concepts, probe questions, candidate
answers, and the labelled images behind neuron choice, DiffMean and the test items.

Each world says it (:class:`~vlmsae.toyworld.base.World`): its object question and
attribute, ``steer_every_object`` (every object value a target, or a seeded draw of them
with images added per target) and ``kept_concept`` (what steering must leave alone):

- ``shapes``: the targets are the 8 shapes. The one-word answer to "What is shown in this
  image?" must (not) be the target shape, and "What color is the object?" must still be
  answered with the object's true colour (prompt followed / unrelated concept kept).
- ``emoji``: 341 emoji are too many to steer one by one, and each is the main emoji of only
  1 in 341 images; the targets are ``n_targets`` emoji drawn by seed, one per Unicode group
  in turn (so that they spread over the taxonomy), and the training images are enriched
  with ``n_per_target`` images of each target (the first ones of the ``train`` split whose
  main emoji it is) so that every target has enough images for its neuron and its DiffMean
  direction. The one-word answer must (not) be the target emoji's name; the emoji world
  asks no second one-word question, so the "prompt followed" probe is the caption
  ("Describe the image."): it must still name the image's true background ("... on a
  dotted background"), an attribute that steering the emoji should leave alone.
  Suppression items show a target as the main emoji; insertion items show no target at
  all (neither as main nor as second emoji).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlmsae.steer.compare import make_items
from vlmsae.steer.evaluate import Item, Probe
from vlmsae.toyworld.worlds import World, get_world

CAPTION_TOKENS = 20
"""Answer limit of the caption probe: the longest emoji caption ("a" + two 5-word names +
"and a" + "on a X background") is 18 words, one token each, plus the end token."""
MAX_SCAN = 1_000_000
"""Images of a split looked at, at most, to find the images a target needs."""


def toy_probes(world: str | World | None = None) -> list[Probe]:
    """The target question and the "prompt still followed" question of ``world``."""
    w = get_world(world)
    kept = w.kept_concept
    return [
        Probe(w.object_question, w.object_attribute, one_word=True),
        Probe(kept.question, kept.attribute, one_word=True)
        if kept.one_word
        else Probe(kept.question, kept.attribute, max_new_tokens=CAPTION_TOKENS),
    ]


def toy_candidates(world: str | World | None = None) -> dict[str, tuple[str, ...]]:
    """The values a judge may read in each probe's answer. Emoji backgrounds are read as
    ``"dotted background"``: the CLDR name "dotted line face" holds a background word."""
    w = get_world(world)
    attrs, kept = w.attributes, w.kept_concept
    return {
        w.object_attribute: attrs[w.object_attribute],
        kept.attribute: tuple(f"{v}{kept.suffix}" for v in attrs[kept.attribute]),
    }


def facts_of(world: str | World, record: Any) -> dict[str, str]:
    """The true value of every probed attribute of one image (as the judge names it)."""
    w = get_world(world)
    kept = w.kept_concept
    return {
        w.object_attribute: getattr(record, w.object_attribute),
        kept.attribute: f"{getattr(record, kept.attribute)}{kept.suffix}",
    }


def _objects(world: World, record: Any) -> tuple[str, ...]:
    """The object values an image shows (the main one, ``record.<object_attribute>``,
    first)."""
    return world.concepts(record)[world.object_attribute]


def steering_targets(world: str | World, n_targets: int, seed: int = 0) -> tuple[str, ...]:
    """The concepts steered: every shape; or ``n_targets`` emoji drawn by ``seed``, one per
    Unicode group in turn (each group's emoji in a seeded random order), in class order."""
    w = get_world(world)
    values = w.attributes[w.object_attribute]
    if w.steer_every_object:
        return tuple(values)
    if not 1 <= n_targets <= len(values):
        raise ValueError(f"n_targets must be in [1, {len(values)}], got {n_targets}")
    rng = np.random.default_rng([seed, 23])
    queues = []
    for group in w.attributes["group"]:
        members = [leaf[-1] for leaf in w.leaf_classes() if leaf[0] == group]
        queues.append(list(rng.permutation(members)))
    picked: list[str] = []
    while len(picked) < n_targets:
        for q in queues:
            if q and len(picked) < n_targets:
                picked.append(str(q.pop(0)))
    return tuple(v for v in values if v in set(picked))


def find_records(
    world: str | World, split: str, n: int, keep: Callable[[Any], bool], seed: int = 0
) -> list[Any]:
    """The first ``n`` records of ``split`` (from index 0) that ``keep`` accepts."""
    w = get_world(world)
    found = []
    for index in range(MAX_SCAN):
        if len(found) == n:
            return found
        record = w.sample(split, index, seed)
        if keep(record):
            found.append(record)
    raise ValueError(f"only {len(found)} of {n} images found in the first {MAX_SCAN} of {split}")


def toy_items(
    split: str,
    n: int,
    kind: str,
    seed: int = 0,
    world: str | World | None = None,
    targets: Sequence[str] | None = None,
) -> list[Item]:
    """``n`` items of ``split``: suppression targets the concept shown, insertion a random
    other target (see the module docstring for the emoji world)."""
    w = get_world(world)
    targets = tuple(targets or steering_targets(w, 8, seed))
    if w.steer_every_object:
        images, records = w.make_world(split, n, seed=seed)
    else:
        chosen = set(targets)
        if kind == "suppress":  # the main object is a target
            records = find_records(
                w, split, n, lambda r: getattr(r, w.object_attribute) in chosen, seed
            )
        else:  # no target anywhere in the image
            records = find_records(w, split, n, lambda r: not chosen & set(_objects(w, r)), seed)
        images = [w.render(r, seed) for r in records]
    facts = [facts_of(w, r) for r in records]
    return make_items(images, facts, w.object_attribute, targets, kind, seed)


def train_set(
    world: str | World, n_train: int, targets: Sequence[str], n_per_target: int, seed: int = 0
) -> tuple[list[Any], list[str]]:
    """``(images, object label per image)`` for the SAE, neuron choice and DiffMean: the
    first ``n_train`` images of ``train`` and (emoji world) the first ``n_per_target``
    images of each target (as the main emoji), in index order."""
    w = get_world(world)
    records = list(w.iter_world("train", n_train, seed))
    if not w.steer_every_object:
        have = {r.index for r in records}
        for t in targets:
            extra = find_records(
                w, "train", n_per_target, lambda r, t=t: getattr(r, w.object_attribute) == t, seed
            )
            records += [r for r in extra if r.index not in have]
            have.update(r.index for r in extra)
        records.sort(key=lambda r: r.index)
    labels = [str(getattr(r, w.object_attribute)) for r in records]
    return [w.render(r, seed) for r in records], labels
