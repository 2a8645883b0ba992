"""Vision encoders: adapters with named hook points, capture, SAE attachment, caching.

Importing this package imports torch (not transformers); the caching functions live in
:mod:`vlmsae.encoders.cache`.
"""

from vlmsae.encoders.adapters import Encoder, find_blocks
from vlmsae.encoders.intervene import SAEAttachment, attach_sae
from vlmsae.encoders.tokens import HOOKPOINTS, TokenSelection, select_tokens

__all__ = [
    "HOOKPOINTS",
    "Encoder",
    "SAEAttachment",
    "TokenSelection",
    "attach_sae",
    "find_blocks",
    "select_tokens",
]
