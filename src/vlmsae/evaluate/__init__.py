"""Evaluation of an SAE against what it should capture (``vlmsae evaluate``).

``evaluate_substitution`` splices the SAE into the model at its hook point and measures how
much of the model's behaviour the reconstruction keeps (fraction recovered against zero and
mean ablations).

``concept_detection`` finds the best single-latent detector of every labelled concept (F1,
AUROC) and the best concept of every latent; ``sparse_probing`` scores logistic regressions
on the k latents chosen per concept on held-out images; ``evaluate_sae_concepts`` runs both
for an SAE over an activation store, with the raw neurons and an untrained SAE of the same
shape as baselines; ``load_labels`` reads the concepts of a store's images (toy-world truth,
folder classes and taxonomies, CUB attributes, a CSV).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConceptDetection": "vlmsae.evaluate.concepts",
    "concept_detection": "vlmsae.evaluate.concepts",
    "best_latent_auroc": "vlmsae.evaluate.concepts",
    "ProbingConfig": "vlmsae.evaluate.config",
    "EvaluateConfig": "vlmsae.evaluate.config",
    "ProbingResult": "vlmsae.evaluate.probing",
    "sparse_probing": "vlmsae.evaluate.probing",
    "ConceptEvaluation": "vlmsae.evaluate.run",
    "evaluate_sae_concepts": "vlmsae.evaluate.run",
    "ConceptLabels": "vlmsae.evaluate.labels",
    "load_labels": "vlmsae.evaluate.label_sources",
    "SubstitutionResult": "vlmsae.evaluate.substitution",
    "evaluate_substitution": "vlmsae.evaluate.substitution",
    "plot_recovered": "vlmsae.evaluate.substitution",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmsae.evaluate' has no attribute {name!r}")
