"""The steering score (vlmsae.steer.score) and the CLIP judge on real models: the shipped
toy CLIP as the embedder, the tiny random LLaVA (conftest.py) as the steered model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import random_images
from vlmsae.steer.judges import ClipJudge
from vlmsae.steer.score import (
    ClipEmbedder,
    SteeringScore,
    derangement,
    steering_score,
    steering_scores,
)
from vlmsae.toyworld import MODELS_DIR
from vlmsae.toyworld.batches import pixel_values
from vlmsae.toyworld.shapes import ATTRIBUTES, concept_prompts, make_world


@pytest.fixture(scope="module")
def toy_clip() -> ClipEmbedder:
    return ClipEmbedder.from_pretrained(MODELS_DIR / "clip")


def _assert_unit_rows(emb: np.ndarray, n: int, width: int) -> None:
    assert emb.shape == (n, width) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# ---- ClipEmbedder on the shipped toy CLIP -----------------------------------------------


def test_clip_embedder_matches_clip_forward(toy_clip):
    """Unit-norm float32 [n, E] rows equal to CLIPModel's own (projected, normalised)
    embeddings, with the PIL image processor (torchvision is not a dependency)."""
    from transformers import CLIPImageProcessorPil

    assert isinstance(toy_clip.image_processor, CLIPImageProcessorPil)
    width = toy_clip.model.config.projection_dim
    texts = ["a red object", "a large green star on a striped background", "a star"]
    images, _ = make_world("test", 5)
    text_NE, image_NE = toy_clip.embed_texts(texts), toy_clip.embed_images(images)
    _assert_unit_rows(text_NE, 3, width)
    _assert_unit_rows(image_NE, 5, width)
    # reference: the model's forward on the toy world's own pixels and the tokenizer's ids
    enc = toy_clip.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = toy_clip.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixel_values(images),
        )
    np.testing.assert_allclose(text_NE, out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(image_NE, out.image_embeds.numpy(), atol=1e-5)
    # padding a short text to a long one's length does not change its embedding
    alone = np.concatenate([toy_clip.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(text_NE, alone, atol=1e-5)


def test_clip_embedder_truncates_texts_to_the_text_tower(toy_clip):
    """The toy tokenizer allows 128 tokens, the text tower 16 positions: a long answer is
    cut to what the tower can embed (its end is ignored) instead of raising."""
    n_positions = toy_clip.model.config.text_config.max_position_embeddings
    long = "a large green star on a striped background and a small red circle on a dotted"
    assert len(toy_clip.tokenizer(long)["input_ids"]) > n_positions
    emb = toy_clip.embed_texts([long, long + " background", "a red object"])
    _assert_unit_rows(emb, 3, toy_clip.model.config.projection_dim)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


def test_clip_embedder_images_are_nearest_their_colour_prompt(toy_clip):
    images, records = make_world("test", 32)
    colors = ATTRIBUTES["color"]
    prompt_CE = toy_clip.embed_texts(concept_prompts()["color"])
    predicted = [colors[i] for i in (toy_clip.embed_images(images) @ prompt_CE.T).argmax(1)]
    accuracy = np.mean([p == r.color for p, r in zip(predicted, records, strict=True)])
    assert accuracy >= 0.9, accuracy  # the toy CLIP is ~100 % zero-shot on colour


# ---- ClipJudge with the toy CLIP's text encoder -------------------------------------------


@pytest.mark.parametrize("attribute", ["color", "shape", "background"])
def test_clip_judge_answer_equal_to_a_prompt_names_that_value(toy_clip, attribute):
    values = ATTRIBUTES[attribute]
    bare = ClipJudge(toy_clip.embed_texts, template="{}")
    assert [bare.name_value(v, values, one_word=True) for v in values] == list(values)
    prompted = ClipJudge(toy_clip.embed_texts, template="a {} object")
    answers = [f"a {v} object" for v in values]
    assert [prompted.name_value(a, values, one_word=False) for a in answers] == list(values)


def test_clip_judge_margin_and_one_word(toy_clip):
    colors = ATTRIBUTES["color"]
    answer = "a blue object"
    sims = (
        toy_clip.embed_texts([f"a {c} object" for c in colors]) @ toy_clip.embed_texts([answer])[0]
    )
    best, second = np.sort(sims)[::-1][:2]
    gap = float(best - second)
    assert gap > 1e-3

    def judge(margin):
        return ClipJudge(toy_clip.embed_texts, "a {} object", margin).name_value(
            answer, colors, one_word=False
        )

    assert judge(gap - 1e-4) == "blue"
    assert judge(gap + 1e-4) is None
    j = ClipJudge(toy_clip.embed_texts, "a {} object")
    assert j.name_value(answer, colors, one_word=True) is None  # three words
    assert j.name_value("", colors, one_word=False) is None
    assert j.name_value("...", colors, one_word=False) is None  # no word at all


def test_clip_judge_embeds_the_candidates_once(toy_clip):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return toy_clip.embed_texts(texts)

    j = ClipJudge(embed, "a {} object")
    for answer in ("a red object", "a green object", "a red object"):
        j.name_value(answer, ATTRIBUTES["color"], one_word=False)
    assert calls[0] == [f"a {c} object" for c in ATTRIBUTES["color"]]
    assert calls[1:] == [["a red object"], ["a green object"], ["a red object"]]


# ---- steering_scores and derangement (pure) ---------------------------------------------


def test_steering_scores_known_answers():
    e_KE = np.eye(3, dtype=np.float32)
    concept_KE = np.array([[2.0, 0, 0], [0, 3.0, 0]])  # need not be unit-norm
    steered_KNE = np.stack([np.tile(e_KE[0], (4, 1)), np.tile(e_KE[1], (4, 1))])
    none_NE = np.tile(e_KE[2], (4, 1))  # orthogonal to both concepts
    got = steering_scores(none_NE, steered_KNE, concept_KE)
    assert got == SteeringScore(none=0.0, steered=1.0, shuffled=0.0, n_neurons=2, n_images=4)
    # half the answers of neuron 0 name neuron 1's concept: steered drops, shuffled rises
    steered_KNE[0, :2] = e_KE[1]
    got = steering_scores(none_NE, steered_KNE, concept_KE)
    assert (got.steered, got.shuffled) == (0.75, 0.25)
    one = steering_scores(none_NE, steered_KNE[:1], concept_KE[:1])
    assert one.n_neurons == 1 and math.isnan(one.shuffled) and one.steered == 0.5


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_steering_scores_equal_the_definition(k, n, e, seed):
    rng = np.random.default_rng(seed)
    none_NE, steered_KNE = _unit(rng, n, e), _unit(rng, k, n, e)
    concept_KE = rng.normal(size=(k, e))
    got = steering_scores(none_NE, steered_KNE, concept_KE, seed=seed)

    def cos(a, b):
        return float(a @ b / np.linalg.norm(b))

    none = np.mean([cos(none_NE[j], concept_KE[i]) for i in range(k) for j in range(n)])
    steered = np.mean([cos(steered_KNE[i, j], concept_KE[i]) for i in range(k) for j in range(n)])
    assert got.n_neurons == k and got.n_images == n
    assert math.isclose(got.none, none, abs_tol=1e-9)
    assert math.isclose(got.steered, steered, abs_tol=1e-9)
    if k == 1:
        assert math.isnan(got.shuffled)
    else:
        perm = derangement(k, seed)
        shuffled = [cos(steered_KNE[i, j], concept_KE[perm[i]]) for i in range(k) for j in range(n)]
        assert math.isclose(got.shuffled, np.mean(shuffled), abs_tol=1e-9)
    # scaling the concepts by positive factors changes nothing
    scaled = steering_scores(none_NE, steered_KNE, concept_KE * rng.uniform(0.1, 10, (k, 1)), seed)
    np.testing.assert_allclose(scaled[:3], got[:3], atol=1e-9)


@given(st.integers(2, 60), st.integers(0, 2**32 - 1))
def test_derangement_is_a_permutation_without_fixed_points(n, seed):
    perm = derangement(n, seed)
    assert sorted(perm.tolist()) == list(range(n))
    assert not (perm == np.arange(n)).any()
    assert np.array_equal(perm, derangement(n, seed))


def test_derangement_needs_two_elements():
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least 2"):
            derangement(n)


# ---- steering_score end to end on the tiny random LLaVA -----------------------------------


class OneHotEmbedder:
    """Each distinct text is its own axis; an image embeds as the text in ``im.info["word"]``.

    So a cosine is 1 when an answer is the word of the concept's images, else 0.
    """

    def __init__(self, width: int = 32) -> None:
        self.axes: dict[str, int] = {}
        self.width = width

    def _one_hot(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.width), np.float32)
        for i, t in enumerate(texts):
            out[i, self.axes.setdefault(t, len(self.axes))] = 1.0
        return out

    def embed_texts(self, texts):
        return self._one_hot(list(texts))

    def embed_images(self, images):
        return self._one_hot([im.info["word"] for im in images])


def _tagged_images(word: str, n: int, seed: int):
    images = random_images(n, seed=seed)
    for im in images:
        im.info["word"] = word
    return images


def _match_rate(answers, words) -> float:
    return float(np.mean([[a == w for a in ans] for ans, w in zip(answers, words, strict=True)]))


# the block the tiny LLaVA reads; with α = 100 there, neuron 7 of tiny_sae turns every answer
# into "a" and neuron 5 leaves it empty (unsteered answers are empty: checked below)
LAYER = 2


def test_steering_score_pairs_answers_with_their_neurons(tiny_llava, tiny_sae):
    images = random_images(4, seed=0)
    top_images = {7: _tagged_images("a", 3, seed=10), 5: _tagged_images("", 2, seed=11)}
    score, answers = steering_score(
        tiny_llava, tiny_sae, LAYER, top_images, images, OneHotEmbedder(), alpha=100.0
    )
    assert set(answers["steered"]) == {7, 5}
    assert all(len(a) == 4 for a in [answers["none"], *answers["steered"].values()])
    assert answers["steered"][7] != answers["none"]  # a huge α changes the answers
    assert score.n_neurons == 2 and score.n_images == 4
    assert all(math.isfinite(v) for v in score[:3])
    none = _match_rate([answers["none"]] * 2, ["a", ""])
    steered = _match_rate([answers["steered"][7], answers["steered"][5]], ["a", ""])
    shuffled = _match_rate([answers["steered"][7], answers["steered"][5]], ["", "a"])
    assert (score.none, score.steered, score.shuffled) == (none, steered, shuffled)
    assert score.steered == 1.0 and score.shuffled == 0.0 and score.none < 1.0


def test_steering_score_with_an_identity_clamp_changes_nothing(tiny_llava, tiny_sae):
    """Neuron 3's code is 2.0 on every token: clamping it to 2.0 in preserve mode is exact."""
    images = random_images(3, seed=1)
    score, answers = steering_score(
        tiny_llava,
        tiny_sae,
        LAYER,
        {3: _tagged_images("a", 2, seed=12)},
        images,
        OneHotEmbedder(),
        alpha=2.0,
        mode="preserve",
    )
    assert answers["steered"][3] == answers["none"]
    assert score.steered == score.none and math.isnan(score.shuffled)
    assert (score.n_neurons, score.n_images) == (1, 3)


def test_steering_score_needs_neurons_and_images(tiny_llava, tiny_sae):
    with pytest.raises(ValueError, match="at least one neuron"):
        steering_score(tiny_llava, tiny_sae, LAYER, {}, random_images(1), OneHotEmbedder())
    with pytest.raises(ValueError, match="at least one neuron"):
        steering_score(tiny_llava, tiny_sae, LAYER, {7: random_images(1)}, [], OneHotEmbedder())
