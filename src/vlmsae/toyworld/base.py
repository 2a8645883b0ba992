"""What a toy world is: the :class:`World` base class every world implements.

A world owns everything that differs between worlds: its ground truth (sampler, record
type, attributes, taxonomy, concepts per image, questions), its rendering, the prompts
and vocabulary of its models, its shipped-model folder, its build recipe and evaluation
bars, what steering asks of it, and the sentences the demo writes about it. Code outside
the world classes asks the world (:func:`vlmsae.toyworld.worlds.get_world`) and never
compares world names.

This module imports no world, so the worlds (``shapes``, ``emoji``) and the registry
(``worlds``) can all import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from PIL import Image

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Folder of the shipped models: the shapes world's ``clip/`` and ``llava/``, and the emoji
world's ``emoji/clip/`` and ``emoji/llava/``."""
SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits of every world; each draws from its own random stream."""


def split_id(split: str) -> int:
    """Position of ``split`` in :data:`SPLITS` (part of every image's random stream)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def iter_records(
    sample: Callable[[str, int, int], Any], split: str, n: int, seed: int = 0, start: int = 0
) -> Iterator:
    """``sample(split, i, seed)`` for ``i`` in ``start .. start + n - 1`` (any world)."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    for i in range(start, start + n):
        yield sample(split, i, seed)


class KeptConcept(NamedTuple):
    """The concept steering must leave alone, and the question that reads it back."""

    question: str
    attribute: str
    one_word: bool
    """The question asks for one word (else the value is read from a longer answer)."""
    suffix: str = ""
    """Added to every value as a judge reads it (``"dotted" + " background"``)."""


class World(ABC):
    """A toy world (get one with :func:`~vlmsae.toyworld.worlds.get_world`)."""

    name: ClassVar[str]
    """The world's name (``--world NAME``)."""
    record_type: ClassVar[type]
    """The dataclass of one image's ground truth."""
    taxonomy_levels: ClassVar[tuple[str, ...]]
    """Attributes from the top of the taxonomy to its leaves (the class folders)."""
    object_question: ClassVar[str] = "What is shown in this image? Use exactly one word!"
    """The question whose answer is one word (the object's name)."""
    object_attribute: ClassVar[str]
    """The attribute that one word names."""
    caption_question: ClassVar[str] = "Describe the image."
    questions: ClassVar[tuple[str, ...]]
    """Every question the toy LLaVA is trained on."""
    models_subdir: ClassVar[str]
    """Folder of the shipped models under :data:`MODELS_DIR` ('' for the default world)."""
    several_objects: ClassVar[bool]
    """An image may show several objects, so an attribute may hold several values in one
    image (:meth:`concepts`); else every attribute holds exactly one."""
    text_positions: ClassVar[int]
    """Token positions of the toy CLIP's text tower (the longest caption fits)."""
    clip_eval_attributes: ClassVar[tuple[str, ...]]
    """Attributes whose zero-shot accuracy ``toyworld evaluate`` reports."""
    llava_eval: ClassVar[dict[str, str]]
    """``llava_KEY`` metric -> the question whose answer it checks."""
    bars: ClassVar[dict[str, float]]
    """Accuracy each evaluation metric must reach on held-out images."""
    build_n_train: ClassVar[int]
    """Training images of the shipped models' recipe."""
    build_clip: ClassVar[dict[str, Any]]
    """``ClipTrainConfig`` fields of the recipe."""
    build_llava: ClassVar[dict[str, Any]]
    """``LlavaTrainConfig`` fields of the recipe."""
    build_dino: ClassVar[dict[str, Any]] = {}
    """``SslTrainConfig`` fields of the recipe of the independent embedder (toy DINOv2)."""
    steer_every_object: ClassVar[bool]
    """Steering targets every object value (few enough); else a seeded draw of them, with
    training images added per target."""
    kept_concept: ClassVar[KeptConcept]
    """What steering should leave alone, and the question that checks it."""
    demo_images: ClassVar[tuple[int, int]]
    """The demo's default ``(n_train, n_test)``."""

    # -- ground truth -------------------------------------------------------------------
    @property
    @abstractmethod
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Every categorical concept and its values, in a fixed order."""

    @abstractmethod
    def sample(self, split: str, index: int, seed: int = 0) -> Any:
        """The ground truth of image ``index`` of ``split`` (a pure function)."""

    @abstractmethod
    def render(self, record: Any, seed: int = 0) -> Image.Image:
        """Draw the image of ``record`` (deterministic)."""

    @abstractmethod
    def leaf_classes(self) -> list[tuple[str, ...]]:
        """Every taxonomy leaf (one value per ``taxonomy_levels``) in class order."""

    @abstractmethod
    def concepts(self, record: Any) -> dict[str, tuple[str, ...]]:
        """Attribute -> the values present in ``record`` (several where an image shows
        several objects)."""

    @abstractmethod
    def concept_prompts(self) -> dict[str, list[str]]:
        """Attribute -> one prompt per value, for the attributes CLIP learns to name
        (its extra training captions and its zero-shot classes)."""

    @abstractmethod
    def vocabulary_texts(self) -> list[str]:
        """Texts whose words make the world's tokenizer vocabulary, in order."""

    def all_captions(self) -> list[str] | None:
        """Every caption of the world when there are few enough to list, else None."""
        return None

    def iter_world(self, split: str, n: int, seed: int = 0, start: int = 0) -> Iterator[Any]:
        """Ground truth of images ``start .. start + n - 1`` of ``split``."""
        return iter_records(self.sample, split, n, seed, start)

    def make_world(
        self, split: str, n: int, seed: int = 0, start: int = 0
    ) -> tuple[list[Image.Image], list[Any]]:
        """``(PIL images, ground-truth records)`` of images ``start ..`` of ``split``."""
        records = list(self.iter_world(split, n, seed, start))
        return [self.render(r, seed) for r in records], records

    @property
    def models_dir(self) -> Path:
        """Folder of the world's shipped ``clip/`` and ``llava/``."""
        return MODELS_DIR / self.models_subdir if self.models_subdir else MODELS_DIR

    @property
    def oracle_attributes(self) -> tuple[str, ...]:
        """The concept attributes: those of the oracle embedding, label purity and the
        browser's concepts (every attribute unless a world leaves one out)."""
        return tuple(self.attributes)

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

    def build_notes(self, out_dir: Path) -> dict[str, Any]:
        """Checks a build of this world makes first, for its ``build-*.json`` (none)."""
        return {}

    # -- prose of the demo ----------------------------------------------------------------
    @abstractmethod
    def concept_summary(self) -> str:
        """The world's concept values in a few words (``"8 shapes, 8 colours, ..."``)."""

    @abstractmethod
    def description(self) -> str:
        """One sentence naming the world, its concepts and its taxonomy."""

    @abstractmethod
    def purity_note(self) -> str:
        """What the label purity of a neuron's top images is measured against."""

    @abstractmethod
    def steering_method(self, common: str, targets: list[str], caption_tokens: int) -> str:
        """What the demo's steering section measured; ``common`` is the text shared by
        every world, with ``{what}`` for the steered concept."""
