"""The shapes world: procedural images whose concepts are known (:class:`ShapesWorld`).

Every image shows one object on a patterned background. Its concepts are the object's
shape (8, grouped into 3 shape families), colour (8), size (2) and the background
pattern (4); position, rotation, size, hue and pixel noise vary within each concept so
that a model has to generalise. The taxonomy is family -> shape -> colour (3 levels,
64 leaves), the layout the hierarchy analysis reads from iNaturalist.

Images are a pure function of ``(seed, split, index)``: the same call always draws the
same pixels, and each split draws from its own random stream, so the splits never
share an image.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vlmsae.toyworld.base import SPLITS as SPLITS
from vlmsae.toyworld.base import KeptConcept, World, iter_records, split_id

IMAGE_SIZE = 64
"""Side of every image, in pixels."""
_SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, which anti-aliases their edges

SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "curved": ("circle", "oval", "heart"),
    "angular": ("triangle", "square", "diamond"),
    "pointed": ("star", "cross"),
}
"""Level 1 -> level 2 of the taxonomy: shape family -> shapes."""
SHAPES: tuple[str, ...] = tuple(s for family in SHAPE_FAMILIES.values() for s in family)
FAMILY_OF: dict[str, str] = {s: f for f, shapes in SHAPE_FAMILIES.items() for s in shapes}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 175, 60),
    "cyan": (30, 205, 215),
    "blue": (40, 70, 225),
    "purple": (140, 50, 205),
    "pink": (245, 125, 195),
}
"""Object colours (level 3 of the taxonomy) and their nominal RGB values."""
SIZES: dict[str, tuple[float, float]] = {"small": (14.0, 17.0), "large": (21.0, 25.0)}
"""Object sizes and the range of the object's radius, in pixels."""
MAX_ROTATION = 20.0
"""Objects are rotated by up to this many degrees either way. Upright shapes keep a tiny
ViT learning shape in minutes: under full 360-degree rotation the toy CLIP reached only
~37 % zero-shot shape in its whole CPU budget (a square turned 45 degrees is a diamond)."""
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
"""Background patterns, drawn in grey so that they never compete with object colours."""

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "family": tuple(SHAPE_FAMILIES),
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "background": BACKGROUNDS,
}
"""Every categorical concept of the world and its values, in a fixed order."""

QUESTION_SHAPE = "What is shown in this image? Use exactly one word!"
QUESTION_COLOR = "What color is the object?"
QUESTION_CAPTION = "Describe the image."
QUESTIONS: tuple[str, ...] = (QUESTION_SHAPE, QUESTION_COLOR, QUESTION_CAPTION)
PROMPT_WORDS = ("user", "assistant", ":", "a", "an", "on", "background", "object", "photo", "of")
"""Words of the chat template and caption templates besides the concept names."""
CONCEPT_TEMPLATES: dict[str, str] = {
    "shape": "a {}",
    "color": "a {} object",
    "size": "a {} object",
    "background": "a {} background",
}
"""Short texts naming one concept value: extra captions in CLIP training, and the class
prompts of zero-shot classification."""
BARS: dict[str, float] = {
    "clip_shape": 0.95,
    "clip_color": 0.95,
    "clip_background": 0.90,
    "llava_shape": 0.90,
    "llava_color": 0.90,
    "llava_caption": 0.80,
}
"""Accuracy each metric of ``toyworld evaluate`` must reach on held-out images."""


@dataclass(frozen=True)
class ToyImage:
    """Ground truth of one image of the world."""

    split: str
    """``train``, ``val`` or ``test``."""
    index: int
    """Index of the image within its split."""
    family: str
    """Shape family (taxonomy level 1)."""
    shape: str
    """Object shape (taxonomy level 2)."""
    color: str
    """Object colour (taxonomy level 3)."""
    size: str
    """``small`` or ``large``."""
    background: str
    """Background pattern."""
    x: float
    """Object centre, pixels from the left edge."""
    y: float
    """Object centre, pixels from the top edge."""
    radius: float
    """Object radius in pixels."""
    angle: float
    """Object rotation in degrees."""

    @property
    def caption(self) -> str:
        return caption(self)

    @property
    def leaf(self) -> str:
        """Taxonomy path ``family_shape_color``."""
        return f"{self.family}_{self.shape}_{self.color}"

    def qa_pairs(self) -> list[tuple[str, str]]:
        """The (question, answer) pairs the toy LLaVA is trained and evaluated on."""
        return [
            (QUESTION_SHAPE, self.shape),
            (QUESTION_COLOR, self.color),
            (QUESTION_CAPTION, self.caption),
        ]

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "caption": self.caption}


def caption(attrs: ToyImage | dict[str, str]) -> str:
    """The image's caption, e.g. ``"a small red star on a striped background"``."""
    a = attrs if isinstance(attrs, dict) else asdict(attrs)
    return f"a {a['size']} {a['color']} {a['shape']} on a {a['background']} background"


def all_captions() -> list[str]:
    """Every caption of the world (one per shape x colour x size x background)."""
    return [
        f"a {z} {c} {s} on a {b} background"
        for s in SHAPES
        for c in COLORS
        for z in SIZES
        for b in BACKGROUNDS
    ]


def caption_index(r: ToyImage) -> int:
    """Position of ``r.caption`` in :func:`all_captions`."""
    s, c = SHAPES.index(r.shape), tuple(COLORS).index(r.color)
    z, b = tuple(SIZES).index(r.size), BACKGROUNDS.index(r.background)
    return ((s * len(COLORS) + c) * len(SIZES) + z) * len(BACKGROUNDS) + b


def concept_prompts() -> dict[str, list[str]]:
    """Attribute -> one prompt per value (in ``ATTRIBUTES`` order)."""
    return {a: [t.format(v) for v in ATTRIBUTES[a]] for a, t in CONCEPT_TEMPLATES.items()}


def leaf_classes() -> list[tuple[str, str, str]]:
    """All taxonomy leaves ``(family, shape, color)`` in their fixed class order."""
    return [(FAMILY_OF[s], s, c) for s in SHAPES for c in COLORS]


def sample_attributes(split: str, index: int, seed: int = 0) -> ToyImage:
    """Draw the ground truth of image ``index`` of ``split`` (a pure function)."""
    rng = np.random.default_rng([seed, split_id(split), index, 0])
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = tuple(SIZES)[rng.integers(len(SIZES))]
    radius = float(rng.uniform(*SIZES[size]))
    margin = radius + 2
    return ToyImage(
        split=split,
        index=index,
        family=FAMILY_OF[shape],
        shape=shape,
        color=tuple(COLORS)[rng.integers(len(COLORS))],
        size=size,
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        x=float(rng.uniform(margin, IMAGE_SIZE - margin)),
        y=float(rng.uniform(margin, IMAGE_SIZE - margin)),
        radius=radius,
        angle=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
    )


def _outline(shape: str) -> np.ndarray:
    """Vertices of a shape of circumradius ~1 centred on the origin, ``[V, 2]``."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if shape == "circle":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "oval":
        return np.stack([np.cos(t), 0.5 * np.sin(t)], 1)
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2], 1) / 16.0
    if shape in ("triangle", "square"):
        n = 3 if shape == "triangle" else 4
        a = np.arange(n) * 2 * np.pi / n - np.pi / 2
        return np.stack([np.cos(a), np.sin(a)], 1) * (1.15 if n == 3 else 1.0)
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.55, 0.0], [0.0, 1.0], [-0.55, 0.0]])
    if shape == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.4)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        w = 0.26
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
        pts += [(-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
        return np.array(pts, dtype=float)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A grey ``[H, W]`` float background of the given pattern."""
    base = rng.uniform(70, 170)
    contrast = rng.uniform(35, 60) * rng.choice([-1.0, 1.0])
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(float)
    period = rng.uniform(10, 14)  # >= 5 pixels at the models' 32x32 input
    phase = rng.uniform(0, period)
    if kind == "plain":
        mask = np.zeros_like(xx)
    elif kind == "striped":
        theta = rng.choice([0.0, 45.0, 90.0, 135.0]) * np.pi / 180
        u = xx * np.cos(theta) + yy * np.sin(theta) + phase
        mask = ((u % period) < period / 2).astype(float)
    elif kind == "dotted":
        cx = (xx + phase) % period - period / 2
        cy = (yy + phase) % period - period / 2
        mask = (cx**2 + cy**2 < (period * 0.27) ** 2).astype(float)
    elif kind == "checkered":
        mask = (((xx + phase) // (period / 2) + (yy + phase) // (period / 2)) % 2).astype(float)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return base + contrast * mask


def _object_rgb(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """The colour with a little hue, saturation and value jitter."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in COLORS[color]))
    h = (h + rng.uniform(-0.02, 0.02)) % 1.0
    s = float(np.clip(s * rng.uniform(0.85, 1.0), 0, 1))
    v = float(np.clip(v * rng.uniform(0.85, 1.05), 0, 1))
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def render(attrs: ToyImage, seed: int = 0) -> Image.Image:
    """Draw the image of ``attrs`` (deterministic: the nuisance draws are seeded too)."""
    rng = np.random.default_rng([seed, split_id(attrs.split), attrs.index, 1])
    grey_HW = _background(attrs.background, rng)
    canvas = np.repeat(grey_HW[:, :, None], 3, axis=2)
    k = _SUPERSAMPLE
    mask_img = Image.new("L", (IMAGE_SIZE * k, IMAGE_SIZE * k), 0)
    theta = np.deg2rad(attrs.angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = _outline(attrs.shape) @ rot.T * attrs.radius + np.array([attrs.x, attrs.y])
    ImageDraw.Draw(mask_img).polygon([tuple(p) for p in (pts * k)], fill=255)
    mask_HW = np.asarray(mask_img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), float)[..., None]
    rgb = np.array(_object_rgb(attrs.color, rng), float)
    canvas = canvas * (1 - mask_HW / 255) + rgb * (mask_HW / 255)
    canvas += rng.normal(0, rng.uniform(2, 8), canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")


def iter_world(split: str, n: int, seed: int = 0, start: int = 0) -> Iterator[ToyImage]:
    """Ground truth of images ``start .. start + n - 1`` of ``split``."""
    return iter_records(sample_attributes, split, n, seed, start)


def make_world(
    split: str, n: int, seed: int = 0, start: int = 0
) -> tuple[list[Image.Image], list[ToyImage]]:
    """Render ``n`` images of ``split``: ``(PIL images, ground-truth records)``.

    The same ``(split, index, seed)`` always gives the same image, whatever ``n`` and
    ``start`` are, so a prefix of a larger sample is the smaller sample.
    """
    records = list(iter_world(split, n, seed, start))
    return [render(r, seed) for r in records], records


def images_array(images: list[Image.Image]) -> np.ndarray:
    """Stack PIL images as ``uint8 [N, H, W, 3]``."""
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


class ShapesWorld(World):
    """The shapes world: one object per image; 22 concept values, 64 taxonomy leaves."""

    name = "shapes"
    record_type = ToyImage
    taxonomy_levels = ("family", "shape", "color")
    object_question = QUESTION_SHAPE
    object_attribute = "shape"
    caption_question = QUESTION_CAPTION
    questions = QUESTIONS
    models_subdir = ""
    several_objects = False
    text_positions = 16
    clip_eval_attributes = ("shape", "color", "size", "background")
    llava_eval = {"shape": QUESTION_SHAPE, "color": QUESTION_COLOR, "caption": QUESTION_CAPTION}
    bars = BARS
    build_n_train = 30_000
    build_clip = {"steps": 5000, "batch_size": 64, "lr": 1e-3}
    build_llava = {
        "lm_layers": 2,
        "text_steps": 200,
        "align_steps": 300,
        "tune_steps": 1500,
        "batch_size": 64,
    }
    build_dino = {"steps": 1000}
    steer_every_object = True
    kept_concept = KeptConcept(QUESTION_COLOR, "color", one_word=True)
    demo_images = (8_000, 2_000)

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        return ATTRIBUTES

    def sample(self, split: str, index: int, seed: int = 0) -> ToyImage:
        return sample_attributes(split, index, seed)

    def render(self, record: Any, seed: int = 0) -> Image.Image:
        return render(record, seed)

    def leaf_classes(self) -> list[tuple[str, ...]]:
        return leaf_classes()

    def concepts(self, record: Any) -> dict[str, tuple[str, ...]]:
        return {a: (getattr(record, a),) for a in ATTRIBUTES}

    def concept_prompts(self) -> dict[str, list[str]]:
        return concept_prompts()

    def vocabulary_texts(self) -> list[str]:
        return [*QUESTIONS, *PROMPT_WORDS, *(v for vals in ATTRIBUTES.values() for v in vals)]

    def all_captions(self) -> list[str]:
        return all_captions()

    def concept_summary(self) -> str:
        a = ATTRIBUTES
        return (
            f"{len(a['shape'])} shapes, {len(a['color'])} colours, {len(a['size'])} "
            f"sizes, {len(a['background'])} backgrounds"
        )

    def description(self) -> str:
        return (
            f"The shapes world: {self.concept_summary()}; the taxonomy is family → shape → colour."
        )

    def purity_note(self) -> str:
        return (
            "Label purity (the labels checked against the truth) is, over family, shape, "
            "colour, size and background, the largest share of a neuron's top images that "
            "share one value."
        )

    def steering_method(self, common: str, targets: list[str], caption_tokens: int) -> str:
        return common.format(what="shape") + (
            "Insertion: the one-word answer names the target shape (concept), the colour "
            "answer is still right (prompt followed). Suppression: the true shape disappears "
            "from the answer (concept), the colour answer is still right (prompt followed). "
            "Examples and α sweeps are in steering/."
        )
