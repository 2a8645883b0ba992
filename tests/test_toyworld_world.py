"""The toy world itself: determinism, splits, taxonomy, export layout, oracle store."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmsae.data.store import ActivationStore
from vlmsae.toyworld import shapes as world
from vlmsae.toyworld.embeddings import oracle_dims, oracle_embedding, write_oracle_embeddings
from vlmsae.toyworld.export import class_dir_name, export_imagefolder, read_exported


def test_concept_counts_meet_the_spec():
    assert len(world.SHAPES) >= 8 and len(world.COLORS) >= 8
    assert len(world.SIZES) >= 2 and len(world.BACKGROUNDS) >= 4
    assert len(world.leaf_classes()) == len(world.SHAPES) * len(world.COLORS)
    assert set(world.FAMILY_OF) == set(world.SHAPES)


@settings(max_examples=20, deadline=None)
@given(split=st.sampled_from(world.SPLITS), index=st.integers(0, 10**6), seed=st.integers(0, 99))
def test_images_are_a_pure_function_of_seed_split_index(split, index, seed):
    a = world.render(world.sample_attributes(split, index, seed), seed)
    b = world.render(world.sample_attributes(split, index, seed), seed)
    assert a.size == (world.IMAGE_SIZE, world.IMAGE_SIZE) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_prefix_of_a_larger_sample_is_the_smaller_sample():
    small_imgs, small = world.make_world("val", 5, seed=3)
    big_imgs, big = world.make_world("val", 8, seed=3)
    assert small == big[:5]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(small_imgs, big_imgs[:5], strict=True)
    )
    _, shifted = world.make_world("val", 3, seed=3, start=5)
    assert shifted == big[5:]


def test_splits_and_seeds_draw_different_images():
    px = {s: world.images_array(world.make_world(s, 4, 0)[0]) for s in world.SPLITS}
    assert not np.array_equal(px["train"], px["val"])
    assert not np.array_equal(px["val"], px["test"])
    other = world.images_array(world.make_world("test", 4, 1)[0])
    assert not np.array_equal(px["test"], other)
    with pytest.raises(ValueError, match="split"):
        world.sample_attributes("dev", 0)


def test_attributes_cover_every_value_and_object_lies_inside():
    recs = list(world.iter_world("train", 2000, 0))
    for name, values in world.ATTRIBUTES.items():
        assert {getattr(r, name) for r in recs} == set(values), name
    for r in recs:
        lo, hi = world.SIZES[r.size]
        assert lo <= r.radius <= hi
        assert r.radius < r.x < world.IMAGE_SIZE - r.radius
        assert r.radius < r.y < world.IMAGE_SIZE - r.radius
        assert r.family == world.FAMILY_OF[r.shape]
        assert abs(r.angle) <= world.MAX_ROTATION  # upright within the bound
    assert max(abs(r.angle) for r in recs) > world.MAX_ROTATION / 2  # but still varied


def test_object_pixels_carry_the_object_colour():
    imgs, recs = world.make_world("test", 30, 0)
    for im, r in zip(imgs, recs, strict=True):
        px = np.asarray(im, float)
        centre = px[int(r.y) - 1 : int(r.y) + 2, int(r.x) - 1 : int(r.x) + 2].mean((0, 1))
        if r.shape in ("cross", "star", "heart", "diamond", "oval"):
            continue  # the centre may be near an edge after rotation; checked on solid shapes
        nominal = np.array(world.COLORS[r.color], float)
        assert np.abs(centre - nominal).max() < 60, (r, centre)


def test_captions_and_qa_pairs():
    r = world.sample_attributes("test", 0)
    assert r.caption == f"a {r.size} {r.color} {r.shape} on a {r.background} background"
    qa = dict(r.qa_pairs())
    assert qa[world.QUESTION_SHAPE] == r.shape
    assert qa[world.QUESTION_COLOR] == r.color
    assert qa[world.QUESTION_CAPTION] == r.caption
    assert r.leaf == f"{r.family}_{r.shape}_{r.color}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return export_imagefolder(root, "test", 40, seed=0)


def test_export_has_the_inaturalist_layout(exported):
    dirs = sorted(p for p in exported.iterdir() if p.is_dir())
    assert dirs
    for d in dirs:
        m = re.fullmatch(r"(\d{5})_([a-z]+)_([a-z]+)_([a-z]+)", d.name)
        assert m, d.name
        family, shape, color = m.group(2, 3, 4)
        assert world.FAMILY_OF[shape] == family and color in world.COLORS
        assert world.leaf_classes()[int(m.group(1))] == (family, shape, color)
    n_files = sum(1 for d in dirs for _ in d.glob("*.png"))
    assert n_files == 40


def test_attributes_csv_is_in_dataset_order_and_matches_pixels(exported):
    listed = [p for d in sorted(exported.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))]
    images = read_exported(exported)
    assert [im.path for im in images] == [p.resolve() for p in listed]
    truth = {r.index: r for r in world.iter_world("test", 40, 0)}
    for im in images[:10]:
        assert im.record == truth[im.record.index]
        assert im.path.parent.name == class_dir_name(
            im.record.family, im.record.shape, im.record.color
        )
        expected = np.asarray(world.render(im.record, 0))
        assert np.array_equal(np.asarray(world.Image.open(im.path).convert("RGB")), expected)
    with open(exported / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["caption"] == images[0].record.caption


def test_oracle_similarity_is_the_fraction_of_shared_attributes():
    recs = list(world.iter_world("val", 50, 0))
    emb = oracle_embedding(recs)
    assert emb.shape == (50, len(oracle_dims()))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    sim = emb @ emb.T
    names = list(world.ATTRIBUTES)
    for i in range(0, 50, 7):
        for j in range(0, 50, 5):
            shared = np.mean([getattr(recs[i], a) == getattr(recs[j], a) for a in names])
            assert sim[i, j] == pytest.approx(shared, abs=1e-6)


def test_oracle_store_lists_exported_images_in_order(exported, tmp_path):
    store = write_oracle_embeddings(exported, tmp_path / "oracle")
    again = ActivationStore(tmp_path / "oracle")
    images = read_exported(exported)
    assert again.kind == "embeddings" and len(again) == 40 and again.d == len(oracle_dims())
    assert again.images == [str(im.path) for im in images]
    np.testing.assert_array_equal(again.rows[:, 0], np.arange(40))
    np.testing.assert_allclose(again[:], oracle_embedding([im.record for im in images]))
    assert store.d == again.d
