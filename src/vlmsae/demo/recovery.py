"""Concept recovery: the demo's main check that a trained SAE beats an untrained one.

With :mod:`vlmsae.evaluate` on the held-out images and the world's truth (every group,
subgroup, emoji and background an image holds; the emoji world's ``second`` is the same emoji
again and is left out): the share of concepts whose best single latent detects them at F1 ≥
0.5, the mean best F1, and the held-out balanced accuracy of k-sparse probes (k = 1 and 5),
for every SAE, its untrained baselines and the raw neurons of its hook. Per latent, the
taxonomy level of the concept it detects best says what each Matryoshka group holds.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.evaluate.config import DETECTOR_F1, ProbingConfig

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.evaluate.concepts import ConceptDetection
    from vlmsae.evaluate.labels import ConceptLabels
    from vlmsae.sae import SAE

PROBE_K = (1, 5)
"""Latents per sparse probe."""
LEFT_OUT_SETS = ("second",)
"""Concept sets that repeat another (the emoji world's second emoji is in ``emoji``)."""


def concept_labels(store: ActivationStore) -> ConceptLabels:
    """The truth of the store's images (its exported split), one row per image in the
    store's order, without repeated sets and concepts held by no or every image."""
    from vlmsae.evaluate.codes import image_index
    from vlmsae.evaluate.label_sources import toy_labels

    labels = toy_labels(store).rows(image_index(store))
    n_pos = np.asarray(labels.present.sum(0)).ravel()
    keep = (n_pos > 0) & (n_pos < labels.n_images)
    keep &= ~np.isin(np.array(labels.sets), LEFT_OUT_SETS)
    return labels.columns(keep)


class Recovery(NamedTuple):
    """Concept recovery of one representation (an SAE's latents or raw neurons)."""

    numbers: dict[str, float]
    """Share detected, mean best F1 (overall and per concept set), probe accuracies."""
    latent_set: np.ndarray
    """``object [S]`` the set of each latent's best concept at F1 ≥ 0.5 (``""``: none)."""


def recover(codes: Any, labels: ConceptLabels, seed: int = 0) -> Recovery:
    """Concept detection and k-sparse probing (k in :data:`PROBE_K`) of ``codes [N, S]``."""
    from vlmsae.evaluate.concepts import concept_detection
    from vlmsae.evaluate.probing import sparse_probing

    det = concept_detection(codes, labels.present, auroc=False)
    probe = sparse_probing(codes, labels.present, ProbingConfig(k_values=PROBE_K, seed=seed))
    sets = np.array(labels.sets)
    out: dict[str, float] = {
        "concepts_detected": float((det.best_f1 >= DETECTOR_F1).mean()),
        "mean_best_f1": float(det.best_f1.mean()),
    }
    for s in dict.fromkeys(labels.sets):
        m = sets == s
        out[f"concepts_detected_{s}"] = float((det.best_f1[m] >= DETECTOR_F1).mean())
        out[f"mean_best_f1_{s}"] = float(det.best_f1[m].mean())
    for j, k in enumerate(probe.k_values):
        bal = probe.balanced_accuracy[:, j]
        out[f"probe{k}_balanced_accuracy"] = float(np.nanmean(bal)) if np.isfinite(bal).any() \
            else float("nan")  # fmt: skip
    return Recovery(out, latent_sets(det, labels))


def latent_sets(det: ConceptDetection, labels: ConceptLabels) -> np.ndarray:
    """The set of each latent's best concept where its F1 reaches 0.5, else ``""``."""
    sets = np.array([*labels.sets, ""], dtype=object)
    ok = (det.latent_concept >= 0) & (det.latent_f1 >= DETECTOR_F1)
    return sets[np.where(ok, det.latent_concept, len(labels.sets))]


class GroupContents(NamedTuple):
    """What the kept neurons of each Matryoshka group detect best, and their depth."""

    counts: list[dict[str, int]]
    """Per group: kept neurons whose best concept (F1 ≥ 0.5) is of each taxonomy level or of
    another concept set (the background, ...), or of none (``mixed``)."""
    level: list[float]
    """Per group: mean taxonomy level (0 = top) of the neurons detecting an object concept."""
    object_depth: list[float]
    """Per group: the paper's mean LCA depth over the object neurons alone (neurons of the
    other sets and mixed neurons left out)."""


def group_contents(
    latent_set: np.ndarray,
    n_active: np.ndarray,
    top: Any,
    taxonomy: dict[str, np.ndarray],
    group_sizes: tuple[int, ...],
    min_active: int,
    sets: tuple[str, ...] = (),
) -> GroupContents:
    """Per group of an SAE (one group for a plain SAE): the levels (and other ``sets``) its
    kept neurons detect best and the LCA depth of the object neurons among them."""
    from vlmsae.metrics.hierarchy import encode_taxonomy, hierarchy

    levels = list(taxonomy)
    others = [s for s in dict.fromkeys(sets) if s not in levels]
    kept = np.asarray(n_active) >= min_active
    objects = kept & np.isin(latent_set, levels)
    paths = encode_taxonomy(list(zip(*(v.tolist() for v in taxonomy.values()), strict=True)))
    depth = hierarchy(paths, top, group_sizes, objects, min_active=min_active)
    counts, level = [], []
    for lo, hi in zip(np.cumsum([0, *group_sizes[:-1]]), np.cumsum(group_sizes), strict=True):
        g_set, g_kept = latent_set[lo:hi], kept[lo:hi]
        c = {name: int(np.sum(g_kept & (g_set == name))) for name in (*levels, *others)}
        c["mixed"] = int(np.sum(g_kept & (g_set == "")))
        counts.append(c)
        n_obj = sum(c[lv] for lv in levels)
        level.append(sum(i * c[lv] for i, lv in enumerate(levels)) / n_obj if n_obj else np.nan)
    return GroupContents(counts, level, depth.group_mean_depth.tolist())


@functools.cache
def _substitution_inputs(clip: str, test_dir: str, limit: int) -> tuple[Any, Any]:
    """The toy CLIP and the held-out images, loaded once per run."""
    from vlmsae.data.images import load_dataset
    from vlmsae.encoders.adapters import Encoder

    return Encoder.from_pretrained(clip), load_dataset(test_dir, limit=limit)


def subst_numbers(sae: SAE, clip: str, test_dir: str, limit: int) -> dict[str, float]:
    """Fractions recovered (against the zero and mean ablations) of the toy CLIP with the
    SAE spliced in at its hook, on the first ``limit`` held-out images: the cosine of the
    final embedding to the original's and the k-NN accuracy of the class (zero-shot accuracy
    is left out: it would embed every class name again for every SAE)."""
    from vlmsae.evaluate.substitution import run_substitution

    encoder, dataset = _substitution_inputs(clip, test_dir, limit)
    res = run_substitution(sae, encoder, dataset, batch_size=500)  # no zero-shot: no texts
    out = {}
    for metric, by in res.recovered.items():
        for ablation, v in by.items():
            out[f"recovered_{metric}_{ablation}"] = float(v)
    return out
