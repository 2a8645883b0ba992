"""The emoji world's data: which emoji it uses, their names and taxonomy, and their glyphs.

Two files ship in ``vlmsae/toyworld/emoji/`` so that nobody needs the font:

- ``emoji.tsv``: one row per emoji of the world: code points, the CLDR short name, a
  unique one-word name (the answer of the one-word question), the Unicode group and
  subgroup (UTS #51 ``emoji-test.txt``), and the glyph's row in the atlas;
- ``atlas.png``: every glyph pre-rendered from Noto Color Emoji (RGBA, ``SPRITE`` pixels a
  side, in ``emoji.tsv`` order, ``ATLAS_COLUMNS`` per row).

:func:`select_emoji` and :func:`render_atlas` rebuild both from ``emoji-test.txt`` and the
font (Debian: ``unicode-data`` and ``fonts-noto-color-emoji``); ``vlmsae toyworld build
--world emoji`` calls them when the font is there. The glyphs are Noto Color Emoji's
(images under Apache 2.0, font under the SIL Open Font License 1.1); see ``NOTICE``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

EMOJI_DIR = Path(__file__).resolve().parent / "emoji"
"""Folder of the shipped emoji data (``emoji.tsv``, ``atlas.png``, ``NOTICE``)."""
EMOJI_TEST_PATHS = (Path("/usr/share/unicode/emoji/emoji-test.txt"),)
"""Where ``emoji-test.txt`` is looked for (Debian's ``unicode-data``)."""
FONT_PATHS = (
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    Path("/usr/share/fonts/noto/NotoColorEmoji.ttf"),
)
"""Where Noto Color Emoji is looked for."""
SPRITE = 48
"""Side of each glyph in the atlas, in pixels (the largest an emoji is drawn at)."""
ATLAS_COLUMNS = 20
SKIPPED_GROUPS = ("Component", "Flags")
"""Groups left out: skin-tone / hair components and flags."""
PER_SUBGROUP = 4
"""At most this many emoji per subgroup, so that big subgroups (faces, hands) do not
dominate the world."""
SIMILARITY_SIDE = 12
"""Glyphs are compared at this side (about their size at the models' 32x32 input)."""
MIN_DISTANCE = 0.14
"""Two glyphs closer than this (RMS difference of their 12x12 RGB over a grey
background, 0..1) are "too alike at the input resolution": the later one is skipped."""
GROUP_SLUGS = {
    "Smileys & Emotion": "smileys",
    "People & Body": "people",
    "Animals & Nature": "animals",
    "Food & Drink": "food",
    "Travel & Places": "travel",
    "Activities": "activities",
    "Objects": "objects",
    "Symbols": "symbols",
}
"""Short names of the Unicode groups, as they appear in folder names and captions."""


@dataclass(frozen=True)
class Emoji:
    """One emoji of the world."""

    codepoints: str
    """Space-separated hex code points, as in ``emoji-test.txt``."""
    name: str
    """CLDR short name, ASCII and lower case (``"dog face"``)."""
    word: str
    """Unique one-word name (``"dog"``)."""
    group: str
    """Unicode group slug (``"animals"``)."""
    subgroup: str
    """Unicode subgroup (``"animal-mammal"``)."""

    @property
    def char(self) -> str:
        return "".join(chr(int(c, 16)) for c in self.codepoints.split())


def _ascii_name(name: str) -> str | None:
    """Lower-case ASCII words of a CLDR name, or None for names that list things."""
    if ":" in name or "," in name:
        return None  # "flag: Germany", "family: man, woman, boy", "keycap: 1"
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    words = text.split()
    return " ".join(words) if words and all(w.isalpha() for w in words) else None


def parse_emoji_test(path: str | Path) -> list[tuple[str, str, str, str]]:
    """Fully-qualified emoji of ``emoji-test.txt``: ``(codepoints, name, group, subgroup)``."""
    out, group, subgroup = [], "", ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            cps, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            if status.strip() != "fully-qualified":
                continue
            # comment: " 😀 E1.0 grinning face"
            name = comment.strip().split(" ", 2)[2]
            out.append((cps.strip(), name, group, subgroup))
    return out


def _candidates(emoji: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """Drop skipped groups, skin tones, keycaps, ZWJ sequences and unusable names."""
    keep = []
    for cps, name, group, subgroup in emoji:
        points = [int(c, 16) for c in cps.split()]
        if group in SKIPPED_GROUPS or group not in GROUP_SLUGS:
            continue
        if any(0x1F3FB <= p <= 0x1F3FF or p in (0x200D, 0x20E3) for p in points):
            continue  # skin tones, ZWJ sequences (people combinations), keycaps
        ascii_name = _ascii_name(name)
        if ascii_name is None:
            continue
        keep.append((cps, ascii_name, GROUP_SLUGS[group], subgroup))
    return keep


def _render_glyph(char: str, font) -> Image.Image:
    """The glyph as an RGBA ``SPRITE``-square image, centred, its longer side filling it."""
    from PIL import ImageDraw

    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the font draws nothing for {char!r}")
    glyph = canvas.crop(box)
    scale = SPRITE / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    glyph = glyph.resize(size, Image.LANCZOS)
    sprite = Image.new("RGBA", (SPRITE, SPRITE), (0, 0, 0, 0))
    sprite.paste(glyph, ((SPRITE - size[0]) // 2, (SPRITE - size[1]) // 2))
    return sprite


def _small_rgb(sprite: Image.Image) -> np.ndarray:
    """The sprite over mid-grey at ``SIMILARITY_SIDE``, as float RGB in 0..1."""
    grey = Image.new("RGBA", sprite.size, (128, 128, 128, 255))
    small = Image.alpha_composite(grey, sprite).convert("RGB")
    small = small.resize((SIMILARITY_SIDE, SIMILARITY_SIDE), Image.BOX)
    return np.asarray(small, np.float32).ravel() / 255.0


STOP_WORDS = frozenset(
    ["a", "an", "and", "at", "for", "from", "in", "of", "on", "out", "over", "the", "to", "with"]
)


def _one_word_names(names: list[str]) -> list[str]:
    """A unique one-word name per emoji (emoji whose name is one word choose first).

    The first free candidate of: the name's last word, its other words from the end,
    its last two words joined, all its words joined (stop words never count).
    """
    order = sorted(range(len(names)), key=lambda i: (len(names[i].split()), i))
    used: set[str] = set()
    out = [""] * len(names)
    for i in order:
        words = [w for w in names[i].split() if w not in STOP_WORDS] or names[i].split()
        cands = [*reversed(words), "".join(words[-2:]), "".join(words)]
        cand = next((c for c in cands if c not in used and len(c) > 1), f"{cands[-1]}{i}")
        used.add(cand)
        out[i] = cand
    return out


def select_emoji(
    emoji_test: str | Path, font_path: str | Path
) -> tuple[list[Emoji], list[Image.Image]]:
    """Choose the world's emoji and render their sprites (deterministic).

    In ``emoji-test.txt`` order, a candidate is kept when its subgroup has fewer than
    ``PER_SUBGROUP`` emoji so far and its glyph is at least ``MIN_DISTANCE`` from every
    glyph kept before it.
    """
    from PIL import ImageFont

    font = ImageFont.truetype(str(font_path), 109)  # the font's only bitmap size
    kept: list[tuple[str, str, str, str]] = []
    sprites: list[Image.Image] = []
    small: list[np.ndarray] = []
    per_sub: dict[str, int] = {}
    for cps, name, group, subgroup in _candidates(parse_emoji_test(emoji_test)):
        if per_sub.get(subgroup, 0) >= PER_SUBGROUP:
            continue
        try:
            sprite = _render_glyph("".join(chr(int(c, 16)) for c in cps.split()), font)
        except (ValueError, OSError):
            continue  # not in this font
        vec = _small_rgb(sprite)
        if small:
            dist = np.sqrt(((np.stack(small) - vec) ** 2).mean(1)).min()
            if dist < MIN_DISTANCE:
                continue
        kept.append((cps, name, group, subgroup))
        sprites.append(sprite)
        small.append(vec)
        per_sub[subgroup] = per_sub.get(subgroup, 0) + 1
    words = _one_word_names([name for _, name, _, _ in kept])
    table = [Emoji(c, n, w, g, s) for (c, n, g, s), w in zip(kept, words, strict=True)]
    return table, sprites


def render_atlas(sprites: list[Image.Image]) -> Image.Image:
    """The sprites in one RGBA image, ``ATLAS_COLUMNS`` per row."""
    rows = -(-len(sprites) // ATLAS_COLUMNS)
    atlas = Image.new("RGBA", (ATLAS_COLUMNS * SPRITE, rows * SPRITE), (0, 0, 0, 0))
    for i, sprite in enumerate(sprites):
        atlas.paste(sprite, ((i % ATLAS_COLUMNS) * SPRITE, (i // ATLAS_COLUMNS) * SPRITE))
    return atlas


TSV_COLUMNS = ("codepoints", "name", "word", "group", "subgroup")


def write_emoji_data(table: list[Emoji], sprites: list[Image.Image], out_dir: Path) -> None:
    """Write ``emoji.tsv`` and ``atlas.png`` into ``out_dir`` (atomically)."""
    from vlmsae.core.io import atomic_write, atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for e in table:
        writer.writerow([e.codepoints, e.name, e.word, e.group, e.subgroup])
    atlas = render_atlas(sprites)
    atomic_write(out_dir / "atlas.png", lambda p: atlas.save(p, format="PNG", optimize=True))
    atomic_write_text(out_dir / "emoji.tsv", buf.getvalue())


def find_sources() -> tuple[Path, Path] | None:
    """``(emoji-test.txt, font)`` when both are installed here, else None."""
    test = next((p for p in EMOJI_TEST_PATHS if p.is_file()), None)
    font = next((p for p in FONT_PATHS if p.is_file()), None)
    return (test, font) if test and font else None


@lru_cache(maxsize=4)
def load_emoji(data_dir: str | None = None) -> tuple[tuple[Emoji, ...], np.ndarray]:
    """The shipped emoji table and their sprites as ``uint8 [E, SPRITE, SPRITE, 4]``."""
    folder = Path(data_dir) if data_dir else EMOJI_DIR
    with open(folder / "emoji.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    table = tuple(Emoji(**{k: r[k] for k in TSV_COLUMNS}) for r in rows)
    atlas = np.asarray(Image.open(folder / "atlas.png").convert("RGBA"))
    sprites = np.stack(
        [
            atlas[
                (i // ATLAS_COLUMNS) * SPRITE : (i // ATLAS_COLUMNS + 1) * SPRITE,
                (i % ATLAS_COLUMNS) * SPRITE : (i % ATLAS_COLUMNS + 1) * SPRITE,
            ]
            for i in range(len(table))
        ]
    )
    return table, sprites


def check_glyphs(out_dir: Path) -> dict[str, str]:
    """Re-render the emoji data from the font when it is installed and compare it with
    the shipped files; a different rendering is written to ``out_dir/emoji-data``. Returns
    the note a build records."""
    sources = find_sources()
    if sources is None:
        return {"glyphs": "shipped atlas (Noto Color Emoji / emoji-test.txt not installed)"}
    table, sprites = select_emoji(*sources)
    shipped_table, shipped_sprites = load_emoji()
    same = tuple(table) == shipped_table and np.array_equal(
        np.stack([np.asarray(s) for s in sprites]), shipped_sprites
    )
    if same:
        return {"glyphs": "re-rendered from the font: identical to the shipped atlas"}
    write_emoji_data(table, sprites, out_dir / "emoji-data")
    log.warning(
        "the installed font renders other glyphs than the shipped atlas; wrote them to %s "
        "(the build uses the shipped atlas)",
        out_dir / "emoji-data",
    )
    return {"glyphs": f"re-rendered glyphs differ from the shipped atlas: {out_dir / 'emoji-data'}"}
