"""The registry of toy worlds: ``shapes`` (fast, 22 concept values) and ``emoji`` (341 real
emoji under Unicode's taxonomy).

:func:`get_world` is the one place a world's name maps to its class
(:class:`~vlmsae.toyworld.shapes.ShapesWorld`, :class:`~vlmsae.toyworld.emoji.EmojiWorld`,
both :class:`~vlmsae.toyworld.base.World`); everything that trains, exports, evaluates,
analyses or steers a toy world asks the world it gets for what differs. An exported split
records its world in ``world.json``.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path

from vlmsae.core.errors import UserError
from vlmsae.toyworld.base import MODELS_DIR as MODELS_DIR
from vlmsae.toyworld.base import World
from vlmsae.toyworld.emoji import EmojiWorld
from vlmsae.toyworld.shapes import ShapesWorld

__all__ = ["DEFAULT_WORLD", "WORLDS", "World", "clip_path", "get_world", "llava_path"]

_CLASSES: dict[str, type[World]] = {cls.name: cls for cls in (ShapesWorld, EmojiWorld)}
WORLDS: tuple[str, ...] = tuple(_CLASSES)
"""Names of the toy worlds."""
DEFAULT_WORLD = ShapesWorld.name
"""The world a call without ``world=`` uses (the shipped models of ``MODELS_DIR``), and
the world of a split folder written before ``world.json`` named its world."""


@cache
def _instance(name: str, objects: int | None) -> World:
    if objects is None:
        return _CLASSES[name]()
    if "objects" not in inspect.signature(_CLASSES[name]).parameters:
        if objects == 1:  # a world of one object per image already
            return _CLASSES[name]()
        raise UserError(f"the {name} world shows one object per image: objects={objects}")
    try:
        return _CLASSES[name](objects=objects)
    except ValueError as e:
        raise UserError(f"{name} world: {e}") from None


def get_world(name: str | World | None = None, *, objects: int | None = None) -> World:
    """The world called ``name`` (one of :data:`WORLDS`; None: :data:`DEFAULT_WORLD`);
    ``objects``: at most this many objects per image (the emoji world's default is 2).

    A world is returned as it is; an unknown name is a :class:`UserError`."""
    if isinstance(name, World):
        return name
    name = name or DEFAULT_WORLD
    if name not in _CLASSES:
        raise UserError(f"unknown toy world {name!r}; expected one of {', '.join(WORLDS)}")
    return _instance(name, objects)


def world_of_split(folder: str | Path) -> World:
    """The world an exported split folder was drawn from (its ``world.json``)."""
    meta_path = Path(folder) / "world.json"
    meta = {}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return get_world(meta.get("world"), objects=meta.get("objects"))


def _model_path(kind: str, models_dir: str | Path | None, world: str | World | None) -> Path:
    w = get_world(world)
    path = (Path(models_dir) if models_dir is not None else w.models_dir) / kind
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no toy {kind} model in {path}; rebuild it with "
            f"`vlmsae toyworld build --world {w.name}`"
        )
    return path


def clip_path(models_dir: str | Path | None = None, world: str | World | None = None) -> Path:
    """Folder of the toy ``CLIPModel`` (+ ``CLIPProcessor``) of ``world`` (default
    :data:`DEFAULT_WORLD`); loads with ``from_pretrained``."""
    return _model_path("clip", models_dir, world)


def llava_path(models_dir: str | Path | None = None, world: str | World | None = None) -> Path:
    """Folder of the toy ``LlavaForConditionalGeneration`` (+ ``LlavaProcessor``)."""
    return _model_path("llava", models_dir, world)
