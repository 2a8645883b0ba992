"""Tiny randomly initialised HF vision models for tests (no network)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE = 32
PATCH = 8
WIDTH = 32


def vision_kwargs(n_layers: int = 4) -> dict:
    return dict(
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        image_size=IMAGE,
        patch_size=PATCH,
    )


def clip_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )


def make_clip(n_layers: int = 4):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(**vision_kwargs(n_layers), projection_dim=16)
    return CLIPVisionModelWithProjection(config).eval()


def make_clip_full(n_layers: int = 4):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=vision_kwargs(n_layers),
        text_config=dict(
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
        ),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def make_siglip(n_layers: int = 4):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    return SiglipVisionModel(SiglipVisionConfig(**vision_kwargs(n_layers))).eval()


def siglip_processor():
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})


def make_dinov2(n_layers: int = 4):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(**vision_kwargs(n_layers))).eval()


def dinov2_processor():
    from transformers import BitImageProcessorPil

    return BitImageProcessorPil(
        size={"shortest_edge": IMAGE},
        crop_size={"height": IMAGE, "width": IMAGE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "what", "is", "this", "a", "shape", "?"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )


def make_llava(n_layers: int = 4):
    """A tiny LLaVA (CLIP vision tower + Llama) and its processor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = make_tokenizer()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_kwargs(n_layers)),
        text_config=LlamaConfig(
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=clip_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=None,
    )
    return model, processor


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "RGB") for _ in range(n)
    ]
