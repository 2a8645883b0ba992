"""How well the toy models know the world, on held-out images.

- CLIP zero-shot: each attribute value is a class whose text embedding is the mean of
  the embeddings of every caption that has that value (CLIP's prompt ensembling, the
  ensemble being the world's captions); an image is classified by cosine similarity.
  ``clip_caption`` is retrieval of the exact caption among all 512.
- LLaVA: greedy ``generate`` through the real ``LlavaProcessor`` on the three questions;
  an answer counts when it equals the truth after lower-casing and stripping.

Targets (:data:`BARS`): CLIP shape / colour >= 95 %, background >= 90 %; LLaVA one-word
shape and colour >= 90 %; LLaVA captions exactly right >= 80 %.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmsae.toyworld.data import all_captions, caption_index
from vlmsae.toyworld.tokenizer import llava_prompt
from vlmsae.toyworld.world import (
    ATTRIBUTES,
    QUESTION_CAPTION,
    QUESTION_COLOR,
    QUESTION_SHAPE,
    ToyImage,
    make_world,
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
"""Accuracy each metric must reach on held-out images."""


def clip_zero_shot(
    model: Any, processor: Any, images: list[Image.Image], records: list[ToyImage]
) -> dict[str, float]:
    """Zero-shot accuracy per attribute, and exact caption retrieval, of a CLIP model."""
    import torch

    captions = all_captions()
    with torch.no_grad():
        text = processor(text=captions, return_tensors="pt", padding=True)
        txt = model.get_text_features(**text)
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        txt_CE = torch.nn.functional.normalize(txt.float(), dim=-1).numpy()
        img = []
        for lo in range(0, len(images), 256):
            pix = processor(images=images[lo : lo + 256], return_tensors="pt")["pixel_values"]
            emb = model.get_image_features(pixel_values=pix)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            img.append(torch.nn.functional.normalize(emb.float(), dim=-1).numpy())
    img_NE = np.concatenate(img)
    out = {}
    for name in ("shape", "color", "size", "background"):
        values = ATTRIBUTES[name]
        protos = np.stack(
            [txt_CE[[f" {v} " in f" {c} " for c in captions]].mean(0) for v in values]
        )
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        pred = (img_NE @ protos.T).argmax(1)
        truth = np.array([values.index(getattr(r, name)) for r in records])
        out[f"clip_{name}"] = float((pred == truth).mean())
    retrieved = (img_NE @ txt_CE.T).argmax(1)
    out["clip_caption"] = float((retrieved == [caption_index(r) for r in records]).mean())
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
) -> dict[str, Any]:
    """Evaluate the toy models on ``n`` held-out images; returns the summary dict.

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

    images, records = make_world(split, n, seed)
    metrics: dict[str, float] = {}
    if "clip" in which:
        path = clip_path(models_dir)
        model = CLIPModel.from_pretrained(path).eval()
        metrics |= clip_zero_shot(model, CLIPProcessor.from_pretrained(path), images, records)
    if "llava" in which:
        path = llava_path(models_dir)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        metrics |= llava_accuracy(model, LlavaProcessor.from_pretrained(path), images, records)
    passed = {k: metrics[k] >= bar for k, bar in BARS.items() if k in metrics}
    return {
        "split": split,
        "n_images": n,
        "seed": seed,
        "metrics": metrics,
        "bars": {k: v for k, v in BARS.items() if k in metrics},
        "passed": passed,
        "all_passed": all(passed.values()),
    }
