"""Constants of the store format shared by its writer and reader (see ``store.py``)."""

from __future__ import annotations

SCHEMA = 1
KINDS = ("activations", "embeddings", "codes")
DTYPES = ("float16", "float32", "bfloat16")
MANIFEST = "manifest.json"
CSR_PARTS = ("indptr", "indices", "values")


class StoreError(RuntimeError):
    """A store directory is missing, incomplete or inconsistent."""
