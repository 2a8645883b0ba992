"""Load an HF LLaVA and answer questions about images with greedy, batched generation.

``load_llava`` takes a hub id (``llava-hf/llava-1.5-7b-hf``) or a local folder (the toy
LLaVA) and returns a :class:`Llava`: the model, its real ``LlavaProcessor`` and an
:class:`vlmsae.encoders.Encoder` around it, which names the vision tower's blocks for the
interventions in :mod:`vlmsae.steer.steering` and :mod:`vlmsae.steer.diffmean`.

Precision: fp32 on CPU (bf16 matmuls are fast on CPU too, but fp16 ones are ~500x slow);
bf16 on GPU unless asked otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmsae.core.errors import UserError
from vlmsae.encoders import Encoder
from vlmsae.encoders.hub import load_model_config, resolve_alias

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"
"""The LLaVA-1.5 prompt, used when the processor has no chat template."""


@dataclass
class Llava:
    """A loaded LLaVA: model, processor and the vision-tower adapter (one object)."""

    model: Any
    """``LlavaForConditionalGeneration`` in eval mode."""
    processor: Any
    """Its ``LlavaProcessor`` (tokenizer + image processor)."""
    encoder: Encoder
    """Adapter over ``model`` exposing ``blocks``, ``read_layers``, ``affects_output``."""
    name: str
    """Hub id or folder it was loaded from."""

    @property
    def device(self) -> torch.device:
        return self.encoder.device  # the encoder wraps the whole LLaVA model

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on GPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def wrap_llava(model: Any, processor: Any, name: str | None = None) -> Llava:
    """Wrap an already-built ``LlavaForConditionalGeneration`` and its ``LlavaProcessor``."""
    if getattr(model.config, "model_type", "") != "llava":
        raise ValueError(
            f"expected a LlavaForConditionalGeneration, got {type(model).__name__} "
            f"(model_type {getattr(model.config, 'model_type', None)!r})"
        )
    if getattr(processor, "tokenizer", None) is None:
        raise ValueError("the processor must be a LlavaProcessor (with a tokenizer)")
    model.eval()
    encoder = Encoder(model, processor.image_processor, name=name)
    return Llava(model, processor, encoder, encoder.name)


def load_llava(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> Llava:
    """Load an HF LLaVA and its processor by hub id or local folder.

    Args:
        name_or_path: e.g. ``llava-hf/llava-1.5-7b-hf`` or ``toyworld.llava_path()``.
        device: where to run it.
        dtype: ``torch.float32`` / ``"bfloat16"`` / ...; default fp32 on CPU, bf16 on GPU.
            fp16 on CPU is refused (it is ~500x slower than fp32 there).
        revision: hub revision.
        kwargs: passed to ``from_pretrained`` (``cache_dir``, ``local_files_only``, ...).
    """
    from transformers import AutoImageProcessor, AutoProcessor, LlavaForConditionalGeneration

    dtype = _parse_dtype(dtype) if dtype is not None else default_dtype(device)
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise ValueError("float16 on CPU is ~500x slower than float32: use float32 or bfloat16")
    name = resolve_alias(name_or_path, "llava")
    model_type = getattr(load_model_config(name, revision), "model_type", None)
    if model_type != "llava":
        raise UserError(
            f"{name} is a {model_type} model, not a LLaVA: steering needs a LLaVA (model_type "
            "llava), e.g. llava-hf/llava-1.5-7b-hf or the toy world's (toyworld.llava_path())"
        )
    model = LlavaForConditionalGeneration.from_pretrained(
        name, revision=revision, dtype=dtype, **kwargs
    )
    # torchvision is not a dependency: ask for the PIL image processor explicitly.
    image_processor = AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil")
    processor = AutoProcessor.from_pretrained(
        name, revision=revision, image_processor=image_processor
    )
    log.info("loaded %s (%s, %s)", name, dtype, device)
    return wrap_llava(model.to(device), processor, name)


def _parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
    names.update({"bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16})
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


def build_prompt(processor: Any, question: str) -> str:
    """The chat prompt for one image and one question (the processor's chat template if it
    has one, else LLaVA-1.5's ``USER: <image>\\n{q} ASSISTANT:``)."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return DEFAULT_PROMPT.format(question=question)


def prepare_inputs(llava: Llava, images: Sequence[Any], questions: Sequence[str]) -> Any:
    """Tokenised, left-padded inputs for one batch of ``(image, question)`` pairs."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    tokenizer = llava.processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
    try:
        inputs = llava.processor(
            images=list(images),
            text=[build_prompt(llava.processor, q) for q in questions],
            return_tensors="pt",
            padding=True,
        )
    finally:
        tokenizer.padding_side = side
    inputs = inputs.to(llava.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(llava.dtype)
    return inputs


def generate(
    llava: Llava,
    images: Any,
    question: str | Sequence[str],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> list[str] | str:
    """Greedy answers (batched; the text after the prompt, stripped): a list with one
    answer per image for a list of images, one answer (a ``str``) for one image.

    Args:
        images: a PIL image, or a list (or tuple) of them.
        question: one question for every image, or one per image.
        max_new_tokens: generation length limit.
        batch_size: images per forward.
    """
    single = not isinstance(images, (list, tuple))
    ids = generate_ids(
        llava,
        [images] if single else images,
        question,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    decoded = [
        a.strip() for a in llava.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    ]
    return decoded[0] if single else decoded


@torch.inference_mode()
def generate_ids(
    llava: Llava,
    images: Sequence[Any],
    question: str | Sequence[str],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy new token ids per image, cut after the first end-of-sequence token."""
    questions = [question] * len(images) if isinstance(question, str) else list(question)
    if len(questions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    tokenizer = llava.processor.tokenizer
    gen = llava.model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
    out: list[list[int]] = []
    for lo in range(0, len(images), batch_size):
        hi = lo + batch_size
        inputs = prepare_inputs(llava, images[lo:hi], questions[lo:hi])
        out_BT = llava.model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id if pad_id is not None else next(iter(eos_ids)),
        )
        for row in out_BT[:, inputs["input_ids"].shape[1] :].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
            out.append(row[:cut])
    return out


@torch.inference_mode()
def next_token_logits(llava: Llava, images: Sequence[Any], question: str) -> torch.Tensor:
    """``[B, V]`` float32 logits of the first answer token (one forward, no generation)."""
    inputs = prepare_inputs(llava, images, [question] * len(images))
    return llava.model(**inputs).logits[:, -1].float()
