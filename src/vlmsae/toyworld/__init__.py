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

Heavy imports (torch, transformers) happen only inside the functions that need them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Folder of the shipped models: the shapes world's ``clip/`` and ``llava/``, and the emoji
world's ``emoji/clip/`` and ``emoji/llava/``."""

_EXPORTS = {
    "make_world": "vlmsae.toyworld.world",
    "iter_world": "vlmsae.toyworld.world",
    "render": "vlmsae.toyworld.world",
    "caption": "vlmsae.toyworld.world",
    "leaf_classes": "vlmsae.toyworld.world",
    "ToyImage": "vlmsae.toyworld.world",
    "ATTRIBUTES": "vlmsae.toyworld.world",
    "SHAPE_FAMILIES": "vlmsae.toyworld.world",
    "QUESTIONS": "vlmsae.toyworld.world",
    "export_imagefolder": "vlmsae.toyworld.export",
    "read_exported": "vlmsae.toyworld.export",
    "oracle_embedding": "vlmsae.toyworld.embeddings",
    "write_oracle_embeddings": "vlmsae.toyworld.embeddings",
    "write_clip_embeddings": "vlmsae.toyworld.embeddings",
    "build_toyworld": "vlmsae.toyworld.build",
    "BuildConfig": "vlmsae.toyworld.build",
    "evaluate_toyworld": "vlmsae.toyworld.evaluate",
    "get_world": "vlmsae.toyworld.worlds",
    "WORLDS": "vlmsae.toyworld.worlds",
}

__all__ = ["MODELS_DIR", "clip_path", "llava_path", *_EXPORTS]


def _model_path(name: str, models_dir: str | Path | None, world: str) -> Path:
    from vlmsae.toyworld.worlds import get_world

    base = Path(models_dir) if models_dir is not None else get_world(world).models_dir
    path = base / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no toy {name} model in {path}; rebuild it with "
            f"`vlmsae toyworld build --world {world}`"
        )
    return path


def clip_path(models_dir: str | Path | None = None, world: str = "shapes") -> Path:
    """Folder of the toy ``CLIPModel`` (+ ``CLIPProcessor``) of ``world`` (``shapes`` or
    ``emoji``); loads with ``from_pretrained``."""
    return _model_path("clip", models_dir, world)


def llava_path(models_dir: str | Path | None = None, world: str = "shapes") -> Path:
    """Folder of the toy ``LlavaForConditionalGeneration`` (+ ``LlavaProcessor``)."""
    return _model_path("llava", models_dir, world)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmsae.toyworld' has no attribute {name!r}")
