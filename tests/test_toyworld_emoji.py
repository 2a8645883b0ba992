"""The emoji world: its shipped data, ground truth, images, export, oracle and vocabulary."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from vlmsae.toyworld import emoji_data
from vlmsae.toyworld.emoji import (
    BACKGROUNDS,
    NONE,
    attributes,
    emoji_table,
    leaf_classes,
    render,
    sample_attributes,
)
from vlmsae.toyworld.worlds import get_world


def test_shipped_emoji_cover_the_unicode_taxonomy():
    table = emoji_table()
    assert len(table) >= 300
    assert len({e.group for e in table}) >= 8
    assert len({e.subgroup for e in table}) >= 50
    assert max(Counter(e.subgroup for e in table).values()) <= emoji_data.PER_SUBGROUP
    words = [e.word for e in table]
    assert len(set(words)) == len(words), "one-word names must be unique"
    assert all(w.isalpha() and w.isascii() and w.islower() for w in words)
    assert len({e.codepoints for e in table}) == len(table)
    for e in table:
        points = [int(c, 16) for c in e.codepoints.split()]
        assert not any(0x1F3FB <= p <= 0x1F3FF for p in points), "skin-tone variant"
        assert 0x20E3 not in points and 0x200D not in points, "keycap or ZWJ sequence"
        assert not any(0x1F1E6 <= p <= 0x1F1FF for p in points), "flag"
        assert "_" not in e.group + e.subgroup + e.word, "levels are joined by _ in folders"


def test_atlas_glyphs_are_distinct_at_the_input_resolution():
    table, sprites = emoji_data.load_emoji()
    from PIL import Image

    assert sprites.shape == (len(table), emoji_data.SPRITE, emoji_data.SPRITE, 4)
    assert (sprites[..., 3].reshape(len(table), -1).max(1) == 255).all(), "an empty glyph"
    small = np.stack([emoji_data._small_rgb(Image.fromarray(s, "RGBA")) for s in sprites])
    sq = (small**2).sum(1)
    dist2 = (sq[:, None] + sq[None, :] - 2 * small @ small.T) / small.shape[1]
    np.fill_diagonal(dist2, np.inf)
    assert np.sqrt(np.clip(dist2.min(), 0, None)) >= emoji_data.MIN_DISTANCE - 1e-4


@pytest.mark.skipif(emoji_data.find_sources() is None, reason="Noto Color Emoji not installed")
def test_font_rerenders_the_shipped_atlas_exactly():
    table, sprites = emoji_data.select_emoji(*emoji_data.find_sources())
    shipped_table, shipped_sprites = emoji_data.load_emoji()
    assert tuple(table) == shipped_table
    assert np.array_equal(np.stack([np.asarray(s) for s in sprites]), shipped_sprites)


def test_one_word_names_are_unique_and_prefer_the_head_noun():
    names = ["dog face", "dog", "red apple", "green apple", "heart with arrow", "apple"]
    words = emoji_data._one_word_names(names)
    assert len(set(words)) == len(words)
    assert words[1] == "dog" and words[5] == "apple"  # one-word names choose first
    assert words[0] == "face" and words[2] == "red" and words[3] == "green"
    assert words[4] == "arrow"  # stop words never count


def test_ground_truth_is_a_pure_function_and_splits_differ():
    a = sample_attributes("train", 7, seed=3)
    assert a == sample_attributes("train", 7, seed=3)
    assert a != sample_attributes("val", 7, seed=3)
    assert np.array_equal(np.asarray(render(a, 3)), np.asarray(render(a, 3)))
    images, records = get_world("emoji").make_world("test", 300)
    assert all(im.size == (64, 64) for im in images)
    seconds = [r.second != NONE for r in records]
    assert 0.35 < np.mean(seconds) < 0.65
    assert {r.background for r in records} == set(BACKGROUNDS)
    for r in records:
        assert r.second != r.emoji
        assert MAIN_LARGER(r)
        assert (r.group, r.subgroup, r.emoji) in set(leaf_classes())


def MAIN_LARGER(r) -> bool:  # noqa: N802 (reads as a predicate in the assertion)
    return r.second == NONE or r.size > r.size2


def test_captions_and_answers_use_the_names_and_the_tokenizer_knows_every_word():
    from vlmsae.toyworld.tokenizer import make_tokenizer

    world = get_world("emoji")
    _, records = get_world("emoji").make_world("val", 200)
    tok = make_tokenizer(add_eos=False, world="emoji")
    unk = tok.convert_tokens_to_ids(tok.unk_token)
    for r in records:
        main = next(e for e in emoji_table() if e.word == r.emoji)
        assert r.caption.startswith(f"a {main.name}")
        assert r.caption.endswith(f"on a {r.background} background")
        qa = dict(r.qa_pairs())
        assert qa[world.object_question] == r.emoji
        for text in qa.values():
            assert unk not in tok(text)["input_ids"], text
    prompts = [p for ps in world.concept_prompts().values() for p in ps]
    assert all(unk not in ids for ids in tok(prompts)["input_ids"])


def test_export_layout_roundtrip_and_oracle(tmp_path):
    from vlmsae.toyworld.embeddings import oracle_dims, write_oracle_embeddings
    from vlmsae.toyworld.export import export_imagefolder, read_exported

    folder = export_imagefolder(tmp_path / "emoji", "test", 40, seed=1, world="emoji")
    meta = __import__("json").loads((folder / "world.json").read_text())
    assert meta["world"] == "emoji"
    assert meta["taxonomy_levels"] == ["group", "subgroup", "emoji"]
    exported = read_exported(folder)
    by_index = sorted((im.record for im in exported), key=lambda r: r.index)
    assert by_index == [sample_attributes("test", i, 1) for i in range(40)]
    classes = {leaf: i for i, leaf in enumerate(leaf_classes())}
    for im in exported:
        r = im.record
        assert im.path.parent.name == f"{classes[(r.group, r.subgroup, r.emoji)]:05d}_{r.leaf}"
        assert im.path.is_file()
    store = write_oracle_embeddings(folder, tmp_path / "oracle")
    emb = np.asarray(store.read(0, len(store)), np.float32)
    assert emb.shape == (40, len(oracle_dims("emoji")))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # cosine: the mean over the 4 blocks of what two images share
    recs = [im.record for im in exported]
    i, j = 0, 1
    w = get_world("emoji")

    def share(a, b, attr):
        ca, cb = w.concepts(a)[attr], w.concepts(b)[attr]
        return len(set(ca) & set(cb)) / np.sqrt(len(ca) * len(cb))

    expect = np.mean([share(recs[i], recs[j], a) for a in w.oracle_attributes])
    assert emb[i] @ emb[j] == pytest.approx(expect, abs=1e-5)


def test_attributes_and_record_rows_roundtrip():
    world = get_world("emoji")
    r = sample_attributes("train", 11)
    row = {k: str(v) for k, v in r.to_dict().items()}
    assert world.record_from_row(row) == r
    attrs = attributes()
    assert attrs["second"][0] == NONE and len(attrs["second"]) == len(attrs["emoji"]) + 1
    assert replace(r, second=NONE).present == (r.emoji,)


def test_tiny_emoji_build_trains_saves_and_evaluates(tmp_path):
    """The whole build and evaluation path of the emoji world on a few images."""
    from vlmsae.toyworld.build import build_toyworld, default_config
    from vlmsae.toyworld.evaluate import EMOJI_BARS, evaluate_toyworld

    cfg = default_config("emoji")
    cfg = replace(
        cfg,
        n_train=64,
        clip=replace(cfg.clip, steps=2, batch_size=16, layers=1, text_layers=1, width=32),
        llava=replace(
            cfg.llava, lm_width=32, text_steps=1, align_steps=1, tune_steps=1, batch_size=8
        ),
    )
    record = build_toyworld(tmp_path / "models", config=cfg)
    assert record["config"]["world"] == "emoji"
    assert "glyphs" in record
    summary = evaluate_toyworld(tmp_path / "models", n=8, world="emoji")
    assert set(EMOJI_BARS) <= set(summary["metrics"])
    assert summary["world"] == "emoji"
    assert all(0 <= v <= 1 for v in summary["metrics"].values())
