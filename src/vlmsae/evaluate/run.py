"""``evaluate_sae_concepts``: concept detection and sparse probing of an SAE against labels,
with the raw neurons of its hook point and an untrained SAE of the same shape as baselines."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.evaluate.codes import image_index, per_image, untrained_like
from vlmsae.evaluate.concepts import (
    ConceptDetection,
    concept_detection,
    detection_summary,
    latent_claims,
)
from vlmsae.evaluate.config import EvaluateConfig
from vlmsae.evaluate.labels import ConceptLabels
from vlmsae.evaluate.probing import ProbingResult, sparse_probing

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.sae import SAE

log = logging.getLogger(__name__)
REPRESENTATIONS = ("sae", "raw", "untrained")
"""What is compared: the SAE's latents, the raw neurons of the store, an untrained SAE."""


@dataclass
class ConceptEvaluation:
    """Everything ``vlmsae evaluate`` measures against the labels."""

    labels: ConceptLabels
    """The concepts evaluated (those with present and absent images among the store's)."""
    detection: dict[str, ConceptDetection]
    """Per representation (``sae``, ``raw``, ``untrained``): best single detectors."""
    probing: dict[str, ProbingResult]
    """Per representation: k-sparse probe accuracies."""
    n_images: int
    n_concepts_dropped: int
    """Concepts of the labels held by none or all of the store's images (left out)."""
    config: EvaluateConfig
    seconds: dict[str, float] = field(default_factory=dict)

    def claims(self) -> np.ndarray:
        """``int64 [C]`` SAE latents claiming each concept (best concept at F1 ≥ threshold)."""
        return latent_claims(self.detection["sae"], self.config.threshold)

    def summary(self) -> dict[str, Any]:
        """Every aggregate number (plain values, full precision)."""
        by_set: dict[str, Any] = {}
        det = self.detection["sae"]
        sets = np.array(self.labels.sets)
        for s in dict.fromkeys(self.labels.sets):
            m = sets == s
            f1 = det.best_f1[m]
            by_set[s] = {"n_concepts": int(m.sum()),
                         "share_detected": float((f1 >= self.config.threshold).mean()),
                         "mean_best_f1": float(f1.mean())}  # fmt: skip
        return {
            "n_images": self.n_images,
            "n_concepts": len(self.labels.sets),
            "n_concepts_dropped": self.n_concepts_dropped,
            "labels": self.labels.source,
            "concept_sets": by_set,
            "detection": {
                r: detection_summary(d, self.config.threshold) for r, d in self.detection.items()
            },
            "probing": {r: p.summary() for r, p in self.probing.items()},
            "config": asdict(self.config),
            "seconds": self.seconds,
        }


def evaluate_sae_concepts(
    sae: SAE,
    store: ActivationStore,
    labels: ConceptLabels,
    cfg: EvaluateConfig = EvaluateConfig(),
) -> ConceptEvaluation:
    """Concept detection and k-sparse probing of ``sae`` on the images of ``store``.

    Args:
        sae: the SAE (applied to every row of the store, then aggregated per image).
        store: an activation store of the SAE's hook point.
        labels: concepts of the store's images, one row per image of ``store.images``
            (:func:`vlmsae.evaluate.labels.load_labels`).
        cfg: aggregation, detector threshold, baselines, probing.
    """
    images = image_index(store)
    if labels.n_images != len(store.images or images):
        raise ValueError(f"{labels.n_images} labelled images for the store's {len(images)}")
    labels = labels.rows(images)
    n_pos = np.asarray(labels.present.sum(0)).ravel()
    keep = (n_pos > 0) & (n_pos < len(images))
    if not keep.all():
        log.info("%d of %d concepts are held by none or all of the %d images: left out",
                 int((~keep).sum()), len(keep), len(images))  # fmt: skip
    labels = labels.columns(keep)
    seconds: dict[str, float] = {}
    reps: dict[str, Any] = {}
    t0 = time.perf_counter()
    reps["sae"] = per_image(store, sae, aggregate=cfg.aggregate, chunk_rows=cfg.chunk_rows,
                            desc="encode (SAE)")  # fmt: skip
    if cfg.baselines:
        reps["raw"] = per_image(store, aggregate=cfg.aggregate, chunk_rows=cfg.chunk_rows,
                                desc="read (raw neurons)")  # fmt: skip
        reps["untrained"] = per_image(store, untrained_like(sae, cfg.untrained_seed),
                                      aggregate=cfg.aggregate, chunk_rows=cfg.chunk_rows,
                                      desc="encode (untrained SAE)")  # fmt: skip
    seconds["encode"] = time.perf_counter() - t0
    detection, probing = {}, {}
    for name, x in reps.items():
        t0 = time.perf_counter()
        detection[name] = concept_detection(x, labels.present)
        seconds[f"detect_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        probing[name] = sparse_probing(x, labels.present, cfg.probing)
        seconds[f"probe_{name}"] = time.perf_counter() - t0
        log.info("%s: detection %.1f s, probing %.1f s", name, seconds[f"detect_{name}"],
                 seconds[f"probe_{name}"])  # fmt: skip
    return ConceptEvaluation(labels, detection, probing, len(images), int((~keep).sum()), cfg,
                             seconds)  # fmt: skip
