"""vlmsae: sparse autoencoders for vision-language models.

The public API is re-exported here. Attributes are resolved lazily (PEP 562) so that
``import vlmsae`` and light CLI commands such as ``vlmsae inspect`` do not pay for
importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "SAE": "vlmsae.sae",
    "SAEConfig": "vlmsae.sae",
    "TrainConfig": "vlmsae.train",
    "train_sae": "vlmsae.train",
    "ActivationStore": "vlmsae.data.store",
    "StoreWriter": "vlmsae.data.store",
}
_SUBPACKAGES = (
    "core",
    "data",
    "sae",
    "train",
    "formats",
    "metrics",
    "encoders",
    "steer",
    "toyworld",
    "report",
)

__all__ = ["__version__", *_EXPORTS, *_SUBPACKAGES]

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore as ActivationStore
    from vlmsae.data.store import StoreWriter as StoreWriter
    from vlmsae.sae import SAE as SAE
    from vlmsae.sae import SAEConfig as SAEConfig
    from vlmsae.train import TrainConfig as TrainConfig
    from vlmsae.train import train_sae as train_sae


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"vlmsae.{name}")
    raise AttributeError(f"module 'vlmsae' has no attribute {name!r}")
