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

from vlmsae.toyworld.emoji import BARS as EMOJI_BARS
from vlmsae.toyworld.shapes import BARS
from vlmsae.toyworld.tokenizer import llava_prompt
from vlmsae.toyworld.worlds import World, get_world

__all__ = ["BARS", "EMOJI_BARS", "clip_zero_shot", "evaluate_toyworld", "llava_accuracy"]

log = logging.getLogger(__name__)


def _unit(out: Any) -> np.ndarray:
    """Unit-norm rows of a ``get_*_features`` result (a tensor or an output object)."""
    import torch

    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).numpy()


def clip_zero_shot(
    model: Any,
    processor: Any,
    images: list[Image.Image],
    records: list,
    world: str | World | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy of a CLIP model per attribute of ``world.clip_eval_attributes``
    (a prediction counts when the image holds the value it names), and exact caption
    retrieval where the world lists every caption. In a world whose images show several
    objects, also the accuracy on one-object images (``clip_NAME_single``) and the upper
    taxonomy levels read off the predicted object (``clip_LEVEL_from_OBJECT``)."""
    import torch

    w = get_world(world)
    prompts, captions = w.concept_prompts(), w.all_captions()

    def embed_texts(texts: list[str]) -> np.ndarray:
        enc = processor(text=texts, return_tensors="pt", padding=True)
        return _unit(model.get_text_features(**enc))

    def pixels(lo: int) -> Any:
        return processor(images=images[lo : lo + 256], return_tensors="pt")["pixel_values"]

    with torch.no_grad():
        txt_CE = embed_texts(captions) if captions is not None else None
        img_NE = np.concatenate(
            [
                _unit(model.get_image_features(pixel_values=pixels(lo)))
                for lo in range(0, len(images), 256)
            ]
        )
        predicted = {}
        for name in w.clip_eval_attributes:
            pred = (img_NE @ embed_texts(prompts[name]).T).argmax(1)
            predicted[name] = [w.attributes[name][p] for p in pred]
    concepts = [w.concepts(r) for r in records]
    obj = w.object_attribute
    single = np.array([len(c[obj]) == 1 for c in concepts])
    out = {}
    for name, values in predicted.items():
        hit = np.array([v in c[name] for v, c in zip(values, concepts, strict=True)])
        out[f"clip_{name}"] = float(hit.mean())
        if w.several_objects and name in w.taxonomy_levels:  # one-object images only
            out[f"clip_{name}_single"] = float(hit[single].mean())
    if txt_CE is not None:
        retrieved = (img_NE @ txt_CE.T).argmax(1)
        truth = [captions.index(r.caption) for r in records]
        out["clip_caption"] = float((retrieved == truth).mean())
    if w.several_objects and obj in predicted:
        # the upper taxonomy levels read off the predicted object (the taxonomy as a
        # hierarchical classifier) rather than from their own prompts
        levels = w.taxonomy_levels
        upper = {leaf[-1]: leaf for leaf in w.leaf_classes()}
        for i in reversed(range(levels.index(obj))):
            hit = [
                upper[v][i] in c[levels[i]] for v, c in zip(predicted[obj], concepts, strict=True)
            ]
            out[f"clip_{levels[i]}_from_{obj}"] = float(np.mean(hit))
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
    model: Any,
    processor: Any,
    images: list[Image.Image],
    records: list,
    world: str | World | None = None,
) -> dict[str, float]:
    """Exact answers of a LLaVA model to each question of ``world.llava_eval`` (shapes:
    one-word shape and colour, and the caption)."""
    w = get_world(world)
    out = {}
    for key, question in w.llava_eval.items():
        truth = [dict(r.qa_pairs())[question] for r in records]
        answers = llava_answers(model, processor, images, question)
        out[f"llava_{key}"] = float(np.mean([a == t for a, t in zip(answers, truth, strict=True)]))
    return out


def evaluate_toyworld(
    models_dir: str | Path | None = None,
    n: int = 500,
    seed: int = 0,
    split: str = "test",
    which: tuple[str, ...] = ("clip", "llava"),
    world: str | World | None = None,
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

    from vlmsae.toyworld.worlds import clip_path, llava_path

    w = get_world(world)
    images, records = w.make_world(split, n, seed)
    metrics: dict[str, float] = {}
    if "clip" in which:
        path = clip_path(models_dir, w)
        model = CLIPModel.from_pretrained(path).eval()
        metrics |= clip_zero_shot(model, CLIPProcessor.from_pretrained(path), images, records, w)
    if "llava" in which:
        path = llava_path(models_dir, w)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        processor = LlavaProcessor.from_pretrained(path)
        metrics |= llava_accuracy(model, processor, images, records, w)
    bars = w.bars
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
