"""The SAE model: one sparse autoencoder module and its native checkpoint format.

``SAE`` (pluggable sparsity: relu / topk / batchtopk / jumprelu, Matryoshka groups on
top) and ``SAEConfig``; checkpoints are directories with ``config.json`` +
``sae.safetensors`` (``SAE.save`` / ``SAE.load``). Training lives in :mod:`vlmsae.train`,
other libraries' formats in :mod:`vlmsae.formats`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from vlmsae.sae.checkpoint import CheckpointError, save_sae
from vlmsae.sae.config import SAEConfig
from vlmsae.sae.model import SAE, SAEOutput, load_sae
from vlmsae.sae.sparse import ActiveLatents

__all__ = [
    "SAE",
    "ActiveLatents",
    "CheckpointError",
    "SAEConfig",
    "SAEOutput",
    "load_sae",
    "save_sae",
]

# Names this package exported before training moved to vlmsae.train (deprecated here).
_MOVED = ("TrainConfig", "train_sae", "train_sweep", "load_sweep", "evaluate_sae", "NonFiniteError")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"vlmsae.sae.{name} moved to vlmsae.train.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module("vlmsae.train"), name)
    raise AttributeError(f"module 'vlmsae.sae' has no attribute {name!r}")
