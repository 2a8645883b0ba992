"""The emoji world: scenes of real emoji under Unicode's own taxonomy.

Every 64x64 image shows one emoji (the *main* one, drawn large) and, half of the time, a
second, smaller one, at random positions, sizes and slight rotations, on one of five
backgrounds (plain grey, stripes, dots, noise, a colour), with brightness jitter and
pixel noise. The emoji (:mod:`~vlmsae.toyworld.emoji_data`: 341 of them, from 8 Unicode
groups and 94 subgroups) and their glyphs (Noto Color Emoji) ship with the package.

The taxonomy is Unicode's: group -> subgroup -> emoji (UTS #51), real and uneven, as
iNaturalist's is. The main emoji is the image's class (its folder in the iNaturalist
layout); the second one composes with it in the caption ("a dog face and a red apple on a
dotted background") and in the oracle embedding.

Images are a pure function of ``(seed, split, index)``, as in the shapes world.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from vlmsae.toyworld.emoji_data import Emoji, load_emoji
from vlmsae.toyworld.world import iter_records

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
SPLITS: tuple[str, ...] = ("train", "val", "test")
NONE = "none"
"""``second`` of an image with one emoji."""

QUESTION_OBJECT = "What is shown in this image? Use exactly one word!"
QUESTION_CAPTION = "Describe the image."
QUESTIONS: tuple[str, ...] = (QUESTION_OBJECT, QUESTION_CAPTION)


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


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _place(rng: np.random.Generator, size: float) -> tuple[float, float]:
    half = size / 2
    return float(rng.uniform(half, IMAGE_SIZE - half)), float(rng.uniform(half, IMAGE_SIZE - half))


def sample_attributes(split: str, index: int, seed: int = 0) -> EmojiImage:
    """Draw the ground truth of image ``index`` of ``split`` (a pure function).

    Main emoji are drawn uniformly over the emoji (every class is equally common); the
    second emoji is another one, placed so that it covers at most a quarter of the main.
    """
    rng = np.random.default_rng([seed, _split_id(split), index, 0, 17])
    table = emoji_table()
    main = table[int(rng.integers(len(table)))]
    size = float(rng.uniform(*MAIN_SIZE))
    x, y = _place(rng, size)
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    second, x2, y2, size2, angle2 = NONE, 0.0, 0.0, 0.0, 0.0
    if rng.random() < P_SECOND:
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
    rng = np.random.default_rng([seed, _split_id(attrs.split), attrs.index, 1, 17])
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


def iter_world(split: str, n: int, seed: int = 0, start: int = 0) -> Iterator[EmojiImage]:
    """Ground truth of images ``start .. start + n - 1`` of ``split``."""
    return iter_records(sample_attributes, split, n, seed, start)


def make_world(
    split: str, n: int, seed: int = 0, start: int = 0
) -> tuple[list[Image.Image], list[EmojiImage]]:
    """Render ``n`` images of ``split``: ``(PIL images, ground-truth records)``."""
    records = list(iter_world(split, n, seed, start))
    return [render(r, seed) for r in records], records
