"""The neuron browser (``vlmsae explore``) and neuron labels (``vlmsae label``).

``build_site`` writes a self-contained static site (``index.html`` + JavaScript data files)
from an SAE, its activation store and whatever the pipeline wrote beside them; it opens
from the file system (no server) and carries ``data-neuron="<id>"`` on every neuron row and
page. ``label_neurons`` names every neuron by zero-shot matching of its top images against
a vocabulary with a CLIP text tower. ``write_cards`` draws neuron cards (PNG) from a built
site; ``steering_probe`` is the paper's white-image steering probe shown on neuron pages.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExploreConfig": "vlmsae.explore.site",
    "build_site": "vlmsae.explore.build",
    "NeuronData": "vlmsae.explore.neurons",
    "compute_neuron_data": "vlmsae.explore.neurons",
    "label_neurons": "vlmsae.explore.labels",
    "NeuronLabels": "vlmsae.explore.labels",
    "write_cards": "vlmsae.explore.cards",
    "ProbeConfig": "vlmsae.explore.probe",
    "steering_probe": "vlmsae.explore.probe",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmsae.explore' has no attribute {name!r}")
