"""The emoji world: scenes of real emoji under Unicode's own taxonomy (:class:`EmojiWorld`).

Every 64x64 image shows one emoji (the *main* one, drawn large) and, half of the time, a
second, smaller one, at random positions, sizes and slight rotations, on one of five
backgrounds (plain grey, stripes, dots, noise, a colour), with brightness jitter and
pixel noise. The emoji (:mod:`~vlmsae.toyworld.emoji_data`: 341 of them, from 8 Unicode
groups and 94 subgroups) and their glyphs (Noto Color Emoji) ship with the package.

The taxonomy is Unicode's: group -> subgroup -> emoji (UTS #51), real and uneven, as
iNaturalist's is. The main emoji is the image's class (its folder in the iNaturalist
layout); the second one composes with it in the caption ("a dog face and a red apple on a
dotted background") and in the oracle embedding.

Images are a pure function of ``(seed, split, index)``, as in the shapes world;
:class:`EmojiWorld` samples and draws them (``make_world``, ``iter_world``).
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmsae.toyworld import emoji_data
from vlmsae.toyworld.base import SPLITS as SPLITS
from vlmsae.toyworld.base import KeptConcept, World, split_id
from vlmsae.toyworld.emoji_data import Emoji, load_emoji

IMAGE_SIZE = 64
"""Side of every image, in pixels."""
MAIN_SIZE = (30.0, 42.0)
"""Range of the main emoji's side, in pixels (15-21 at the models' 32x32 input)."""
SECOND_SIZE = (18.0, 24.0)
"""Range of the second emoji's side: visibly smaller than the main one."""
P_SECOND = 0.5
"""Probability that an image has a second emoji."""
MAX_ROTATION = 12.0
"""Emoji are rotated by up to this many degrees either way."""
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "noisy", "colored")
"""Background kinds: grey, grey stripes, grey dots, smooth grey noise, one colour."""
NONE = "none"
"""``second`` of an image with one emoji."""
OBJECT_COUNTS: tuple[str, ...] = ("one", "two")
"""Values of ``objects``: how many emoji an image shows (the toy CLIP sees it: fidelity.md)."""

QUESTION_OBJECT = "What is shown in this image? Use exactly one word!"
QUESTION_CAPTION = "Describe the image."
QUESTIONS: tuple[str, ...] = (QUESTION_OBJECT, QUESTION_CAPTION)
BARS: dict[str, float] = {
    "clip_emoji": 0.70,
    "clip_subgroup": 0.85,
    "clip_group": 0.90,
    "llava_emoji": 0.70,
}
"""Accuracy each metric of ``toyworld evaluate`` must reach on held-out images."""


@lru_cache(maxsize=1)
def emoji_table() -> tuple[Emoji, ...]:
    """The world's emoji, in class order."""
    return load_emoji()[0]


@lru_cache(maxsize=1)
def _by_word() -> dict[str, Emoji]:
    return {e.word: e for e in emoji_table()}


def emoji_of(word: str) -> Emoji:
    """The emoji whose one-word name is ``word``."""
    return _by_word()[word]


@lru_cache(maxsize=1)
def attributes() -> dict[str, tuple[str, ...]]:
    """Every categorical concept of the world and its values, in a fixed order.

    ``emoji`` / ``subgroup`` / ``group`` are the main emoji's; ``second`` is the second
    emoji (or ``none``).
    """
    table = emoji_table()
    words = tuple(e.word for e in table)
    return {
        "group": tuple(dict.fromkeys(e.group for e in table)),
        "subgroup": tuple(dict.fromkeys(e.subgroup for e in table)),
        "emoji": words,
        "second": (NONE, *words),
        "background": BACKGROUNDS,
        "objects": OBJECT_COUNTS,
    }


@dataclass(frozen=True)
class EmojiImage:
    """Ground truth of one image of the emoji world."""

    split: str
    index: int
    group: str
    """Unicode group of the main emoji (taxonomy level 1)."""
    subgroup: str
    """Unicode subgroup of the main emoji (taxonomy level 2)."""
    emoji: str
    """One-word name of the main emoji (taxonomy level 3, the class)."""
    second: str
    """One-word name of the second emoji, or ``none``."""
    background: str
    x: float
    """Main emoji centre, pixels from the left edge."""
    y: float
    size: float
    """Main emoji side in pixels."""
    angle: float
    x2: float
    """Second emoji centre (0 without one)."""
    y2: float
    size2: float
    angle2: float

    @property
    def caption(self) -> str:
        return caption(self)

    @property
    def leaf(self) -> str:
        """Taxonomy path ``group_subgroup_emoji``."""
        return f"{self.group}_{self.subgroup}_{self.emoji}"

    @property
    def objects(self) -> str:
        """How many emoji the image shows: ``one`` or ``two``."""
        return OBJECT_COUNTS[self.second != NONE]

    @property
    def present(self) -> tuple[str, ...]:
        """One-word names of the emoji in the image, main first."""
        return (self.emoji,) if self.second == NONE else (self.emoji, self.second)

    def qa_pairs(self) -> list[tuple[str, str]]:
        """The (question, answer) pairs the emoji LLaVA is trained and evaluated on."""
        return [(QUESTION_OBJECT, self.emoji), (QUESTION_CAPTION, self.caption)]

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "caption": self.caption}


def caption(attrs: EmojiImage | dict) -> str:
    """``"a dog face and a red apple on a dotted background"`` (CLDR names)."""
    a = attrs if isinstance(attrs, dict) else asdict(attrs)
    names = [emoji_of(a["emoji"]).name]
    if a["second"] != NONE:
        names.append(emoji_of(a["second"]).name)
    return f"a {' and a '.join(names)} on a {a['background']} background"


def leaf_classes() -> list[tuple[str, str, str]]:
    """All taxonomy leaves ``(group, subgroup, emoji)`` in class order."""
    return [(e.group, e.subgroup, e.word) for e in emoji_table()]


def _place(rng: np.random.Generator, size: float) -> tuple[float, float]:
    half = size / 2
    return float(rng.uniform(half, IMAGE_SIZE - half)), float(rng.uniform(half, IMAGE_SIZE - half))


def sample_attributes(split: str, index: int, seed: int = 0, objects: int = 2) -> EmojiImage:
    """Draw the ground truth of image ``index`` of ``split`` (a pure function).

    Main emoji are drawn uniformly over the emoji (every class is equally common); with
    ``objects=2`` half the images get a second emoji, another one, placed so that it covers
    at most a quarter of the main; ``objects=1`` never draws one.
    """
    rng = np.random.default_rng([seed, split_id(split), index, 0, 17])
    table = emoji_table()
    main = table[int(rng.integers(len(table)))]
    size = float(rng.uniform(*MAIN_SIZE))
    x, y = _place(rng, size)
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    second, x2, y2, size2, angle2 = NONE, 0.0, 0.0, 0.0, 0.0
    if objects == 2 and rng.random() < P_SECOND:
        other = int(rng.integers(len(table) - 1))
        other += other >= table.index(main)  # any emoji but the main one
        second = table[other].word
        size2 = float(rng.uniform(*SECOND_SIZE))
        angle2 = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        for _ in range(32):  # the least-overlapping of up to 32 tries
            x2, y2 = _place(rng, size2)
            ox = max(0.0, min(x + size / 2, x2 + size2 / 2) - max(x - size / 2, x2 - size2 / 2))
            oy = max(0.0, min(y + size / 2, y2 + size2 / 2) - max(y - size / 2, y2 - size2 / 2))
            if ox * oy <= 0.25 * size2 * size2:
                break
    return EmojiImage(
        split=split,
        index=index,
        group=main.group,
        subgroup=main.subgroup,
        emoji=main.word,
        second=second,
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        x=x,
        y=y,
        size=size,
        angle=angle,
        x2=x2,
        y2=y2,
        size2=size2,
        angle2=angle2,
    )


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """An RGB float ``[H, W, 3]`` background."""
    n = IMAGE_SIZE
    base = rng.uniform(80, 180)
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    period = rng.uniform(9, 14)
    phase = rng.uniform(0, period)
    contrast = rng.uniform(30, 55) * rng.choice([-1.0, 1.0])
    if kind == "plain":
        grey = np.full((n, n), base)
    elif kind == "striped":
        theta = rng.choice([0.0, 45.0, 90.0, 135.0]) * np.pi / 180
        u = xx * np.cos(theta) + yy * np.sin(theta) + phase
        grey = base + contrast * ((u % period) < period / 2)
    elif kind == "dotted":
        cx = (xx + phase) % period - period / 2
        cy = (yy + phase) % period - period / 2
        grey = base + contrast * (cx**2 + cy**2 < (period * 0.27) ** 2)
    elif kind == "noisy":
        coarse = rng.normal(0, 1, (8, 8))
        up = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((n, n), Image.BICUBIC))
        grey = base + 0.8 * abs(contrast) * up / (np.abs(up).max() + 1e-6)
    elif kind == "colored":
        h, s, v = rng.uniform(0, 1), rng.uniform(0.35, 0.7), rng.uniform(0.55, 0.85)
        return np.broadcast_to(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255, (n, n, 3)).copy()
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return np.repeat(grey[:, :, None], 3, axis=2)


@lru_cache(maxsize=1)
def _sprites() -> np.ndarray:
    return load_emoji()[1]


def _paste(canvas: Image.Image, word: str, x: float, y: float, size: float, angle: float):
    sprites, table = _sprites(), emoji_table()
    sprite = Image.fromarray(sprites[table.index(emoji_of(word))], "RGBA")
    side = max(2, round(size))
    glyph = sprite.resize((side, side), Image.LANCZOS).rotate(
        angle, resample=Image.BILINEAR, expand=True
    )
    canvas.alpha_composite(glyph, (round(x - glyph.width / 2), round(y - glyph.height / 2)))


def render(attrs: EmojiImage, seed: int = 0) -> Image.Image:
    """Draw the image of ``attrs`` (deterministic: the nuisance draws are seeded too)."""
    rng = np.random.default_rng([seed, split_id(attrs.split), attrs.index, 1, 17])
    bg = np.clip(_background(attrs.background, rng), 0, 255).astype(np.uint8)
    # the canvas has a margin so that emoji at the edge are cropped, not shifted
    pad = IMAGE_SIZE // 2
    canvas = Image.new("RGBA", (IMAGE_SIZE + 2 * pad,) * 2, (0, 0, 0, 0))
    canvas.paste(Image.fromarray(bg, "RGB").convert("RGBA"), (pad, pad))
    if attrs.second != NONE:
        _paste(canvas, attrs.second, attrs.x2 + pad, attrs.y2 + pad, attrs.size2, attrs.angle2)
    _paste(canvas, attrs.emoji, attrs.x + pad, attrs.y + pad, attrs.size, attrs.angle)
    rgb = np.asarray(canvas.crop((pad, pad, pad + IMAGE_SIZE, pad + IMAGE_SIZE)).convert("RGB"))
    out = rgb.astype(float) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    out += rng.normal(0, rng.uniform(2, 7), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB")


class EmojiWorld(World):
    """The emoji world: one or two emoji per image, 341 emoji under Unicode's taxonomy."""

    name = "emoji"
    record_type = EmojiImage
    taxonomy_levels = ("group", "subgroup", "emoji")
    object_question = QUESTION_OBJECT
    object_attribute = "emoji"
    caption_question = QUESTION_CAPTION
    questions = QUESTIONS
    models_subdir = "emoji"
    several_objects = True
    text_positions = 32
    clip_eval_attributes = ("emoji", "subgroup", "group", "background")
    llava_eval = {"emoji": QUESTION_OBJECT, "caption": QUESTION_CAPTION}
    bars = BARS
    build_n_train = 40_000
    build_clip = {"steps": 8000, "batch_size": 64, "lr": 1e-3}
    build_llava = {
        "lm_layers": 2,
        "text_steps": 300,
        "align_steps": 300,
        "tune_steps": 3000,
        "batch_size": 64,
    }
    build_dino = {"steps": 2000}
    steer_every_object = False
    kept_concept = KeptConcept(QUESTION_CAPTION, "background", False, " background")
    demo_images = (16_000, 6_000)

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        return attributes()

    def __init__(self, objects: int = 2) -> None:
        if objects not in (1, 2):
            raise ValueError(f"objects must be 1 or 2, got {objects}")
        self.objects = objects
        """Emoji per image at most: 2 (half the images hold a second one), or 1."""

    @property
    def options(self) -> dict[str, Any]:
        return {} if self.objects == 2 else {"objects": self.objects}

    @property
    def oracle_attributes(self) -> tuple[str, ...]:
        """Every attribute but ``second`` (its emoji are in ``emoji`` already), and
        ``objects`` only where images hold one or two emoji (else it never varies)."""
        left_out = {"second"} | ({"objects"} if self.objects == 1 else set())
        return tuple(a for a in self.attributes if a not in left_out)

    def sample(self, split: str, index: int, seed: int = 0) -> EmojiImage:
        return sample_attributes(split, index, seed, self.objects)

    def render(self, record: Any, seed: int = 0) -> Image.Image:
        return render(record, seed)

    def leaf_classes(self) -> list[tuple[str, ...]]:
        return leaf_classes()

    def concepts(self, record: Any) -> dict[str, tuple[str, ...]]:
        present = [emoji_of(w) for w in record.present]
        return {
            "group": tuple(dict.fromkeys(e.group for e in present)),
            "subgroup": tuple(dict.fromkeys(e.subgroup for e in present)),
            "emoji": record.present,
            "second": (record.second,),
            "background": (record.background,),
            "objects": (record.objects,),
        }

    def concept_prompts(self) -> dict[str, list[str]]:
        attrs = self.attributes
        return {
            "group": [f"a {g} emoji" for g in attrs["group"]],
            "subgroup": [f"a {s.replace('-', ' ')} emoji" for s in attrs["subgroup"]],
            "emoji": [f"a {e.name}" for e in emoji_table()],
            "background": [f"a {b} background" for b in attrs["background"]],
        }

    def vocabulary_texts(self) -> list[str]:
        words = [*self.questions, "user assistant : a and on background emoji"]
        words += [e.name for e in emoji_table()] + [e.word for e in emoji_table()]
        return words + [p for ps in self.concept_prompts().values() for p in ps]

    def build_notes(self, out_dir: Path) -> dict[str, Any]:
        """The glyphs re-rendered from the font, compared with the shipped atlas."""
        return emoji_data.check_glyphs(out_dir)

    def concept_summary(self) -> str:
        a, count = self.attributes, ", one or two emoji per image" if self.objects == 2 else ""
        return f"{len(a['emoji'])} emoji, {len(a['background'])} backgrounds{count}"

    def description(self) -> str:
        a, per_image = self.attributes, "one or two" if self.objects == 2 else "one"
        return (
            f"The emoji world: {len(a['emoji'])} emoji from {len(a['subgroup'])} Unicode "
            f"subgroups of {len(a['group'])} groups, {per_image} per image, on "
            f"{len(a['background'])} kinds of background; the taxonomy is Unicode's "
            "group → subgroup → emoji, at each image's main emoji."
        )

    def purity_note(self) -> str:
        count = " and the number of emoji" if self.objects == 2 else ""
        return (
            f"Label purity (the labels checked against the truth) is, over group, subgroup, "
            f"emoji, background{count}, the largest share of a neuron's top images that hold "
            "one value, where an image holds the group, subgroup and emoji of each of its emoji "
            "(main and second); the hierarchy uses the main emoji only (the image's class)."
        )

    def steering_method(self, common: str, targets: list[str], caption_tokens: int) -> str:
        return common.format(what="target emoji") + (
            f"The {self.name} world has {len(self.attributes['emoji'])} emoji; {len(targets)} "
            f"targets ({', '.join(targets)}) are drawn by the seed, one per Unicode group in "
            "turn, and each adds its first training images to the SAE's so that its neuron and "
            "direction have data. Insertion (images showing no target): the one-word answer to "
            '"What is shown in this image?" names the target emoji (concept). Suppression '
            "(images whose main emoji is a target): that name disappears from the answer "
            '(concept). The emoji world has no second one-word question, so "prompt followed" '
            f'asks for the caption ("Describe the image.", up to {caption_tokens} tokens) and '
            "checks that it still names the image's true background (α sweeps in steering/)."
        )
