"""The toy world: a ground-truth vision-language world with tiny trained CLIP and LLaVA.

Procedural images whose concepts are known (shape, colour, size, background, a
3-level taxonomy), captions and QA pairs, and tiny HF models trained on them that ship
with the package::

    from transformers import CLIPModel, LlavaForConditionalGeneration
    from vlmsae import toyworld
    clip = CLIPModel.from_pretrained(toyworld.clip_path())
    llava = LlavaForConditionalGeneration.from_pretrained(toyworld.llava_path())
    images, records = toyworld.make_world("test", n=16)
    toyworld.export_imagefolder("data/toy", split="test", n=1000)

Two worlds, one class each: ``shapes`` (:mod:`.shapes`, the default) and ``emoji``
(:mod:`.emoji`), both :class:`~vlmsae.toyworld.base.World`; ``get_world(name)``
(:mod:`.worlds`, the registry) gives one. The module-level names above (``make_world``,
``ATTRIBUTES``, ...) are the shapes world's. :mod:`.batches` turns records into training
tensors; :mod:`.clip`, :mod:`.llava` and :mod:`.build` train the models.

Heavy imports (torch, transformers) happen only inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlmsae.toyworld.base import MODELS_DIR

_EXPORTS = {
    "make_world": "vlmsae.toyworld.shapes",
    "iter_world": "vlmsae.toyworld.shapes",
    "render": "vlmsae.toyworld.shapes",
    "caption": "vlmsae.toyworld.shapes",
    "leaf_classes": "vlmsae.toyworld.shapes",
    "ToyImage": "vlmsae.toyworld.shapes",
    "ATTRIBUTES": "vlmsae.toyworld.shapes",
    "SHAPE_FAMILIES": "vlmsae.toyworld.shapes",
    "QUESTIONS": "vlmsae.toyworld.shapes",
    "export_imagefolder": "vlmsae.toyworld.export",
    "read_exported": "vlmsae.toyworld.export",
    "oracle_embedding": "vlmsae.toyworld.embeddings",
    "write_oracle_embeddings": "vlmsae.toyworld.embeddings",
    "write_clip_embeddings": "vlmsae.toyworld.embeddings",
    "build_toyworld": "vlmsae.toyworld.build",
    "BuildConfig": "vlmsae.toyworld.build",
    "evaluate_toyworld": "vlmsae.toyworld.evaluate",
    "World": "vlmsae.toyworld.worlds",
    "get_world": "vlmsae.toyworld.worlds",
    "WORLDS": "vlmsae.toyworld.worlds",
    "clip_path": "vlmsae.toyworld.worlds",
    "llava_path": "vlmsae.toyworld.worlds",
}

__all__ = ["MODELS_DIR", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmsae.toyworld' has no attribute {name!r}")
