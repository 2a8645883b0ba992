"""How well the toy models know the world, on held-out images.

- CLIP zero-shot: each attribute value is a class whose prompt names it ("a star",
  "a red object", "a striped background"); an image goes to the class whose prompt
  embedding is most cosine-similar. ``clip_caption`` is retrieval of the exact caption
  among all 512.
- LLaVA: greedy ``generate`` through the real ``LlavaProcessor`` on the three questions;
  an answer counts when it equals the truth after lower-casing and stripping.

Targets (:data:`BARS`): CLIP shape / colour >= 95 %, background >= 90 %; LLaVA one-word
shape and colour >= 90 %; LLaVA captions exactly right >= 80 %.

The emoji world (:data:`EMOJI_BARS`): CLIP zero-shot over the 341 emoji ("a dog face")
>= 70 %, over the 94 subgroups >= 85 % and the 8 groups >= 90 % (a prediction counts when
it names an emoji, subgroup or group present in the image); LLaVA's one-word answer (the
main emoji's name) >= 70 %. Reported without a bar: ``clip_*_single`` (one-emoji images
only), ``clip_subgroup_from_emoji`` / ``clip_group_from_emoji`` (the subgroup / group of
the predicted emoji) and exact captions (``llava_caption``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmsae.toyworld.data import all_captions, caption_index, concept_prompts
from vlmsae.toyworld.tokenizer import llava_prompt
from vlmsae.toyworld.world import (
    ATTRIBUTES,
    QUESTION_CAPTION,
    QUESTION_COLOR,
    QUESTION_SHAPE,
    ToyImage,
)

log = logging.getLogger(__name__)

BARS: dict[str, float] = {
    "clip_shape": 0.95,
    "clip_color": 0.95,
    "clip_background": 0.90,
    "llava_shape": 0.90,
    "llava_color": 0.90,
    "llava_caption": 0.80,
}
"""Accuracy each metric must reach on held-out images (shapes world)."""
EMOJI_BARS: dict[str, float] = {
    "clip_emoji": 0.70,
    "clip_subgroup": 0.85,
    "clip_group": 0.90,
    "llava_emoji": 0.70,
}
"""Accuracy each metric must reach on held-out images (emoji world)."""


def _unit(out: Any) -> np.ndarray:
    """Unit-norm rows of a ``get_*_features`` result (a tensor or an output object)."""
    import torch

    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).numpy()


def clip_zero_shot(
    model: Any, processor: Any, images: list[Image.Image], records: list[ToyImage]
) -> dict[str, float]:
    """Zero-shot accuracy per attribute, and exact caption retrieval, of a CLIP model."""
    import torch

    captions, prompts = all_captions(), concept_prompts()

    def embed_texts(texts: list[str]) -> np.ndarray:
        enc = processor(text=texts, return_tensors="pt", padding=True)
        return _unit(model.get_text_features(**enc))

    with torch.no_grad():
        txt_CE = embed_texts(captions)
        img = []
        for lo in range(0, len(images), 256):
            pix = processor(images=images[lo : lo + 256], return_tensors="pt")["pixel_values"]
            img.append(_unit(model.get_image_features(pixel_values=pix)))
        img_NE = np.concatenate(img)
        out = {}
        for name in ("shape", "color", "size", "background"):
            pred = (img_NE @ embed_texts(prompts[name]).T).argmax(1)
            truth = np.array([ATTRIBUTES[name].index(getattr(r, name)) for r in records])
            out[f"clip_{name}"] = float((pred == truth).mean())
    retrieved = (img_NE @ txt_CE.T).argmax(1)
    out["clip_caption"] = float((retrieved == [caption_index(r) for r in records]).mean())
    return out


def clip_zero_shot_emoji(
    model: Any, processor: Any, images: list[Image.Image], records: list
) -> dict[str, float]:
    """Zero-shot accuracy of a CLIP over the emoji world's concepts (see the module doc)."""
    import torch

    from vlmsae.toyworld.emoji_world import emoji_table
    from vlmsae.toyworld.worlds import get_world

    world = get_world("emoji")
    prompts = world.concept_prompts()

    def pixels(lo: int) -> Any:
        return processor(images=images[lo : lo + 256], return_tensors="pt")["pixel_values"]

    with torch.no_grad():
        img_NE = np.concatenate(
            [
                _unit(model.get_image_features(pixel_values=pixels(lo)))
                for lo in range(0, len(images), 256)
            ]
        )
        predicted = {}
        for name in ("emoji", "subgroup", "group", "background"):
            enc = processor(text=prompts[name], return_tensors="pt", padding=True)
            pred = (img_NE @ _unit(model.get_text_features(**enc)).T).argmax(1)
            predicted[name] = [world.attributes[name][p] for p in pred]
    out = {}
    single = np.array([r.second == "none" for r in records])
    for name, values in predicted.items():
        hit = np.array([v in world.concepts(r)[name] for v, r in zip(values, records, strict=True)])
        out[f"clip_{name}"] = float(hit.mean())
        if name != "background":  # diagnostics: one-emoji images only
            out[f"clip_{name}_single"] = float(hit[single].mean())
    # diagnostics: subgroup and group read off the predicted emoji (the taxonomy as a
    # hierarchical classifier) rather than from their own prompts
    by_word = {e.word: e for e in emoji_table()}
    for level in ("subgroup", "group"):
        hit = [
            getattr(by_word[v], level) in world.concepts(r)[level]
            for v, r in zip(predicted["emoji"], records, strict=True)
        ]
        out[f"clip_{level}_from_emoji"] = float(np.mean(hit))
    return out


def llava_answers(
    model: Any, processor: Any, images: list[Image.Image], question: str, batch_size: int = 64
) -> list[str]:
    """Greedy answers of a LLaVA model to one question about each image."""
    import torch

    answers: list[str] = []
    prompt = llava_prompt(question)
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = images[lo : lo + batch_size]
            inputs = processor(images=chunk, text=[prompt] * len(chunk), return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]
            answers += processor.batch_decode(new, skip_special_tokens=True)
    return [a.strip().lower() for a in answers]


def llava_accuracy(
    model: Any, processor: Any, images: list[Image.Image], records: list[ToyImage]
) -> dict[str, float]:
    """One-word shape and colour answers and exact captions of a LLaVA model."""
    out = {}
    for key, question, truth in (
        ("llava_shape", QUESTION_SHAPE, [r.shape for r in records]),
        ("llava_color", QUESTION_COLOR, [r.color for r in records]),
        ("llava_caption", QUESTION_CAPTION, [r.caption for r in records]),
    ):
        answers = llava_answers(model, processor, images, question)
        out[key] = float(np.mean([a == t for a, t in zip(answers, truth, strict=True)]))
    return out


def evaluate_toyworld(
    models_dir: str | Path | None = None,
    n: int = 500,
    seed: int = 0,
    split: str = "test",
    which: tuple[str, ...] = ("clip", "llava"),
    world: str = "shapes",
) -> dict[str, Any]:
    """Evaluate the toy models of ``world`` on ``n`` held-out images; returns the summary.

    The summary has ``metrics`` (name -> accuracy), ``bars`` and ``passed`` (name ->
    whether the bar is met), and the sample (``split``, ``n``, ``seed``).
    """
    from transformers import (
        CLIPModel,
        CLIPProcessor,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from vlmsae.toyworld import clip_path, llava_path
    from vlmsae.toyworld.worlds import get_world

    w = get_world(world)
    images, records = w.make_world(split, n, seed)
    metrics: dict[str, float] = {}
    if "clip" in which:
        path = clip_path(models_dir, w.name)
        model = CLIPModel.from_pretrained(path).eval()
        score = clip_zero_shot if w.name == "shapes" else clip_zero_shot_emoji
        metrics |= score(model, CLIPProcessor.from_pretrained(path), images, records)
    if "llava" in which:
        path = llava_path(models_dir, w.name)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        processor = LlavaProcessor.from_pretrained(path)
        if w.name == "shapes":
            metrics |= llava_accuracy(model, processor, images, records)
        else:
            for key, question, truth in (
                ("llava_emoji", w.object_question, [r.emoji for r in records]),
                ("llava_caption", w.caption_question, [r.caption for r in records]),
            ):
                answers = llava_answers(model, processor, images, question)
                metrics[key] = float(np.mean([a == t for a, t in zip(answers, truth, strict=True)]))
    bars = BARS if w.name == "shapes" else EMOJI_BARS
    passed = {k: metrics[k] >= bar for k, bar in bars.items() if k in metrics}
    return {
        "world": w.name,
        "split": split,
        "n_images": n,
        "seed": seed,
        "metrics": metrics,
        "bars": {k: v for k, v in bars.items() if k in metrics},
        "passed": passed,
        "all_passed": all(passed.values()),
    }
