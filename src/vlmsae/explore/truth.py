"""Ground truth of a toy world for the browser and the label evaluation.

A store cached from an exported toy-world split (its manifest names the dataset root and
split, whose folder holds ``attributes.csv`` and ``world.json``) has known concepts per
image; everywhere else these functions return None and nothing is shown. The world (shapes
or emoji) is the one the split's ``world.json`` names: its attributes, its concepts per
image (an emoji scene holds the values of both its emoji) and its taxonomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.toyworld.worlds import World, get_world

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore


class ToyTruth(NamedTuple):
    """The known concepts of every image of a store."""

    world: World
    records: list[Any]
    """Ground-truth record per image, in store order."""
    labels: dict[str, np.ndarray]
    """``int64 [N]`` per attribute of ``world.attributes``: the index of the record's own
    value (the main emoji's, in the emoji world)."""
    members: dict[str, np.ndarray]
    """``bool [N, V]`` per concept attribute (``world.oracle_attributes``): the values an
    image holds (``world.concepts``: both emoji of a two-emoji scene)."""

    def values(self, attribute: str) -> tuple[str, ...]:
        return self.world.attributes[attribute]


def truth_from_records(world: str | World, records: Sequence[Any]) -> ToyTruth:
    """The :class:`ToyTruth` of ``records`` (ground-truth records of ``world``)."""
    w = get_world(world)
    attrs = w.attributes
    index = {a: {v: i for i, v in enumerate(vals)} for a, vals in attrs.items()}
    labels = {a: np.array([index[a][getattr(r, a)] for r in records], np.int64) for a in attrs}
    members = {a: np.zeros((len(records), len(attrs[a])), bool) for a in w.oracle_attributes}
    for n, r in enumerate(records):
        concepts = w.concepts(r)
        for a, m in members.items():
            m[n, [index[a][v] for v in concepts[a]]] = True
    return ToyTruth(w, list(records), labels, members)


def split_folder(store: ActivationStore) -> Path | None:
    """The exported toy-world split folder the store's images come from, or None."""
    from vlmsae.toyworld.export import ATTRIBUTES_CSV

    root, split = store.manifest.get("dataset_root"), store.manifest.get("split")
    if not store.images or root is None:
        return None
    folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
    return folder if (folder / ATTRIBUTES_CSV).is_file() else None


def toy_world(store: ActivationStore) -> World | None:
    """The toy world of the store's images (its split's ``world.json``), or None."""
    from vlmsae.toyworld.worlds import world_of_split

    folder = split_folder(store)
    return None if folder is None else world_of_split(folder)


def toy_truth(store: ActivationStore) -> ToyTruth | None:
    """The ground truth of every image of ``store``, or None when the store's images are
    not (all) an exported toy-world split."""
    from vlmsae.toyworld.export import read_exported

    folder = split_folder(store)
    if folder is None:
        return None
    by_path = {str(im.path.resolve()): im.record for im in read_exported(folder)}
    records = [by_path.get(str(Path(p).resolve())) for p in store.images]
    if any(r is None for r in records):
        return None
    return truth_from_records(toy_world(store), records)


def toy_labels(store: ActivationStore) -> dict[str, np.ndarray] | None:
    """Integer value per attribute for every image of ``store`` (``{attribute: [N]}``), or
    None when the store's images are not an exported toy-world split."""
    truth = toy_truth(store)
    return None if truth is None else truth.labels


CONCEPT_SHARE = 0.8
"""A concept is a neuron's when at least this share of its top images hold it."""


class Concepts(NamedTuple):
    """The ground-truth concepts of each neuron's top images."""

    name: list[str | None]
    """The concept values at least ``CONCEPT_SHARE`` of the top images hold, e.g.
    ``"diamond orange large"`` (a taxonomy value is left out when a deeper value it is the
    parent of is named: the family of a named shape, the group and subgroup of a named
    emoji); None where no value is that common or the neuron has no top images."""
    purity: np.ndarray
    """``float64 [S]`` the largest share of the top images holding one concept value
    (label purity; NaN without top images)."""


def _parents(world: World) -> dict[str, dict[str, dict[str, str]]]:
    """Deeper taxonomy level -> upper level it determines -> ``{value: parent value}``
    (shapes: the shape determines the family; emoji: the emoji its subgroup and group,
    the subgroup its group). A colour determines no family, so it has none."""
    levels, leaves = world.taxonomy_levels, world.leaf_classes()
    out: dict[str, dict[str, dict[str, str]]] = {}
    for j, deeper in enumerate(levels):
        for i in range(j):
            parent: dict[str, str] = {}
            if all(parent.setdefault(leaf[j], leaf[i]) == leaf[i] for leaf in leaves):
                out.setdefault(deeper, {})[levels[i]] = parent
    return out


def _shares(row: np.ndarray, truth: ToyTruth) -> dict[str, np.ndarray]:
    """Concept attribute -> ``[V]`` share of the images ``row`` holding each value."""
    return {a: m[row].mean(0) for a, m in truth.members.items()}


def dominant_concepts(top_SK: np.ndarray, truth: ToyTruth) -> Concepts:
    """The concepts and the label purity of every neuron's top images."""
    parents = _parents(truth.world)
    names: list[str | None] = []
    purity = np.full(len(top_SK), np.nan)
    for s, row in enumerate(top_SK):
        row = row[row >= 0]
        if not row.size:
            names.append(None)
            continue
        shares = _shares(row, truth)
        purity[s] = max(float(sh.max()) for sh in shares.values())
        strong = {
            a: [truth.values(a)[i] for i in np.flatnonzero(sh >= CONCEPT_SHARE)]
            for a, sh in shares.items()
        }
        implied = {
            (upper, parent[v])
            for deeper, ups in parents.items()
            for v in strong.get(deeper, ())
            for upper, parent in ups.items()
        }
        named = [v for a, vals in strong.items() for v in vals if (a, v) not in implied]
        names.append(" ".join(named) or None)
    return Concepts(names, purity)


def shared_values(top_K: np.ndarray, truth: ToyTruth, share: float) -> set[str]:
    """Concept values held by at least ``share`` of one neuron's top images."""
    row = top_K[top_K >= 0]
    if not row.size:
        return set()
    return {
        truth.values(a)[i]
        for a, sh in _shares(row, truth).items()
        for i in np.flatnonzero(sh >= share)
    }
