"""Vision encoders: adapters with named hook points, capture, SAE attachment, caching.

Names are resolved lazily (PEP 562) so that ``vlmsae --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Encoder": "vlmsae.encoders.adapters",
    "find_blocks": "vlmsae.encoders.adapters",
    "SAEAttachment": "vlmsae.encoders.intervene",
    "attach_sae": "vlmsae.encoders.intervene",
    "HOOKPOINTS": "vlmsae.encoders.tokens",
    "TokenSelection": "vlmsae.encoders.tokens",
    "select_tokens": "vlmsae.encoders.tokens",
    "CacheConfig": "vlmsae.encoders.cache",
    "CacheResult": "vlmsae.encoders.cache",
    "cache_activations": "vlmsae.encoders.cache",
    "embed_images": "vlmsae.encoders.cache",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from vlmsae.encoders.adapters import Encoder as Encoder
    from vlmsae.encoders.adapters import find_blocks as find_blocks
    from vlmsae.encoders.cache import CacheConfig as CacheConfig
    from vlmsae.encoders.cache import CacheResult as CacheResult
    from vlmsae.encoders.cache import cache_activations as cache_activations
    from vlmsae.encoders.cache import embed_images as embed_images
    from vlmsae.encoders.intervene import SAEAttachment as SAEAttachment
    from vlmsae.encoders.intervene import attach_sae as attach_sae
    from vlmsae.encoders.tokens import HOOKPOINTS as HOOKPOINTS
    from vlmsae.encoders.tokens import TokenSelection as TokenSelection
    from vlmsae.encoders.tokens import select_tokens as select_tokens


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmsae.encoders' has no attribute {name!r}")
