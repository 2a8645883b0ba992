"""Image datasets and the activation store."""

from vlmsae.data.store import ActivationStore, StoreError, StoreWriter

__all__ = ["ActivationStore", "StoreError", "StoreWriter"]
