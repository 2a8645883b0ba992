"""The toy worlds behind one interface: ``shapes`` (fast, 22 concept values) and ``emoji``
(341 real emoji under Unicode's taxonomy).

Everything that trains, exports, evaluates or analyses a toy world asks :func:`get_world`
for what differs between them: the ground-truth sampler and renderer, the attributes and
taxonomy, the questions, the texts the tokenizer knows and the prompts of zero-shot
classification. An exported split records its world in ``world.json``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

WORLDS = ("shapes", "emoji")
"""Names of the toy worlds."""
DEFAULT_WORLD = "shapes"
"""The world a call without ``world=`` uses (the shipped models of ``MODELS_DIR``)."""


@dataclass(frozen=True)
class World:
    """What a toy world is made of (use :func:`get_world`)."""

    name: str
    module_name: str
    taxonomy_levels: tuple[str, ...]
    """Attributes from the top of the taxonomy to its leaves (the class folders)."""
    object_question: str
    """The question whose answer is one word (the object's name)."""
    object_attribute: str
    """The attribute that one word names."""
    models_subdir: str
    """Folder of the shipped models under ``toyworld.MODELS_DIR`` ('' for shapes)."""

    @cached_property
    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Every categorical concept and its values, in a fixed order."""
        attrs = self.module.ATTRIBUTES if self.name == "shapes" else self.module.attributes()
        return attrs

    @property
    def questions(self) -> tuple[str, ...]:
        return self.module.QUESTIONS

    @property
    def caption_question(self) -> str:
        return self.module.QUESTION_CAPTION

    @property
    def record_type(self) -> type:
        return self.module.ToyImage if self.name == "shapes" else self.module.EmojiImage

    @property
    def models_dir(self) -> Path:
        from vlmsae.toyworld import MODELS_DIR

        return MODELS_DIR / self.models_subdir if self.models_subdir else MODELS_DIR

    @property
    def oracle_attributes(self) -> tuple[str, ...]:
        """The attributes of the oracle embedding (``second`` is in ``emoji`` already)."""
        return tuple(a for a in self.attributes if a != "second")

    def sample(self, split: str, index: int, seed: int = 0) -> Any:
        return self.module.sample_attributes(split, index, seed)

    def render(self, record: Any, seed: int = 0) -> Image.Image:
        return self.module.render(record, seed)

    def iter_world(self, split: str, n: int, seed: int = 0, start: int = 0) -> Iterator[Any]:
        return self.module.iter_world(split, n, seed, start)

    def make_world(self, split: str, n: int, seed: int = 0, start: int = 0):
        """``(PIL images, ground-truth records)`` of images ``start ..`` of ``split``."""
        return self.module.make_world(split, n, seed, start)

    def leaf_classes(self) -> list[tuple[str, ...]]:
        """Every taxonomy leaf (one value per ``taxonomy_levels``) in class order."""
        return self.module.leaf_classes()

    def leaf(self, record: Any) -> tuple[str, ...]:
        return tuple(getattr(record, a) for a in self.taxonomy_levels)

    def taxonomy(self) -> dict[str, list[str]]:
        """Level 1 -> its level-2 values (as ``world.json`` records it)."""
        out: dict[str, list[str]] = {}
        for leaf in self.leaf_classes():
            if leaf[1] not in out.setdefault(leaf[0], []):
                out[leaf[0]].append(leaf[1])
        return out

    def record_from_row(self, row: dict[str, str]) -> Any:
        """The record of an ``attributes.csv`` row."""
        kwargs: dict[str, Any] = {}
        for fld in fields(self.record_type):
            value = row[fld.name]
            kind = fld.type if isinstance(fld.type, str) else fld.type.__name__
            kwargs[fld.name] = (
                int(value) if kind == "int" else float(value) if kind == "float" else value
            )
        return self.record_type(**kwargs)

    def concepts(self, record: Any) -> dict[str, tuple[str, ...]]:
        """Attribute -> the values present in ``record`` (several where an image shows
        several objects: both emoji of an emoji scene)."""
        if self.name == "shapes":
            return {a: (getattr(record, a),) for a in self.attributes}
        from vlmsae.toyworld.emoji_world import emoji_of

        present = [emoji_of(w) for w in record.present]
        return {
            "group": tuple(dict.fromkeys(e.group for e in present)),
            "subgroup": tuple(dict.fromkeys(e.subgroup for e in present)),
            "emoji": record.present,
            "second": (record.second,),
            "background": (record.background,),
        }

    def concept_prompts(self) -> dict[str, list[str]]:
        """Attribute -> one prompt per value, for the attributes CLIP learns to name
        (its extra training captions and its zero-shot classes)."""
        if self.name == "shapes":
            from vlmsae.toyworld.data import concept_prompts

            return concept_prompts()
        from vlmsae.toyworld.emoji_world import emoji_table

        attrs = self.attributes
        return {
            "group": [f"a {g} emoji" for g in attrs["group"]],
            "subgroup": [f"a {s.replace('-', ' ')} emoji" for s in attrs["subgroup"]],
            "emoji": [f"a {e.name}" for e in emoji_table()],
            "background": [f"a {b} background" for b in attrs["background"]],
        }

    def vocabulary_texts(self) -> list[str]:
        """Texts whose words make the world's tokenizer vocabulary."""
        if self.name == "shapes":
            raise NotImplementedError("the shapes vocabulary is tokenizer.vocabulary()")
        from vlmsae.toyworld.emoji_world import emoji_table

        words = [*self.questions, "user assistant : a and on background emoji"]
        words += [e.name for e in emoji_table()] + [e.word for e in emoji_table()]
        return words + [p for ps in self.concept_prompts().values() for p in ps]

    def all_captions(self) -> list[str] | None:
        """Every caption of the world when there are few enough to list (shapes)."""
        if self.name == "shapes":
            from vlmsae.toyworld.data import all_captions

            return all_captions()
        return None


_WORLDS = {
    "shapes": World(
        name="shapes",
        module_name="vlmsae.toyworld.world",
        taxonomy_levels=("family", "shape", "color"),
        object_question="What is shown in this image? Use exactly one word!",
        object_attribute="shape",
        models_subdir="",
    ),
    "emoji": World(
        name="emoji",
        module_name="vlmsae.toyworld.emoji_world",
        taxonomy_levels=("group", "subgroup", "emoji"),
        object_question="What is shown in this image? Use exactly one word!",
        object_attribute="emoji",
        models_subdir="emoji",
    ),
}


def get_world(name: str | World | None = None) -> World:
    """The world called ``name`` (``shapes`` or ``emoji``; None: ``DEFAULT_WORLD``)."""
    if isinstance(name, World):
        return name
    name = name or DEFAULT_WORLD
    if name not in _WORLDS:
        from vlmsae.core.errors import UserError

        raise UserError(f"unknown toy world {name!r}; expected one of {', '.join(WORLDS)}")
    return _WORLDS[name]


def world_of_split(folder: str | Path) -> World:
    """The world an exported split folder was drawn from (its ``world.json``)."""
    import json

    meta_path = Path(folder) / "world.json"
    name = None
    if meta_path.is_file():
        name = json.loads(meta_path.read_text(encoding="utf-8")).get("world")
    return get_world(name or "shapes")  # folders written before the emoji world: shapes
