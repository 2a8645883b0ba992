"""The toy CLIP: a tiny HF ``CLIPModel`` trained contrastively on the world's captions."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmsae.toyworld.data import WorldBatch, all_captions, normalize_pixels
from vlmsae.toyworld.tokenizer import EOS, PAD, make_tokenizer
from vlmsae.toyworld.world import IMAGE_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipTrainConfig:
    """Size and training schedule of the toy CLIP."""

    width: int = 128
    """Width of the vision tower (and the text tower)."""
    layers: int = 6
    """Transformer blocks of the vision tower."""
    text_layers: int = 2
    """Transformer blocks of the text tower."""
    patch_size: int = 8
    """ViT patch side in pixels (64x64 images -> 64 patches + CLS)."""
    projection_dim: int = 128
    """Width of the shared image-text embedding."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 128
    """Image-caption pairs per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the weights and the batch order."""

    def __post_init__(self) -> None:
        if self.width % 32 != 0:
            raise ValueError(f"width must be a multiple of 32 (heads of 32), got {self.width}")
        if IMAGE_SIZE % self.patch_size != 0:
            raise ValueError(f"patch_size must divide {IMAGE_SIZE}, got {self.patch_size}")
        if min(self.layers, self.text_layers, self.steps, self.batch_size) < 1:
            raise ValueError("layers, text_layers, steps and batch_size must be >= 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


def make_clip(cfg: ClipTrainConfig) -> Any:
    """A randomly initialised tiny ``CLIPModel`` for the world."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = make_tokenizer(add_eos=True)
    heads = cfg.width // 32
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=cfg.width,
            intermediate_size=2 * cfg.width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=heads,
            max_position_embeddings=16,
            pad_token_id=tok.convert_tokens_to_ids(PAD),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.convert_tokens_to_ids(EOS),
            hidden_act="gelu",
        ),
        vision_config=dict(
            hidden_size=cfg.width,
            intermediate_size=2 * cfg.width,
            num_hidden_layers=cfg.layers,
            num_attention_heads=heads,
            image_size=IMAGE_SIZE,
            patch_size=cfg.patch_size,
            hidden_act="gelu",  # one fused op; quick_gelu's mul+sigmoid doubles CPU step time
        ),
        projection_dim=cfg.projection_dim,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def make_clip_processor() -> Any:
    """The ``CLIPProcessor`` of the toy CLIP (PIL image processor; no torchvision)."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=make_tokenizer(add_eos=True))


def caption_tokens(captions: list[str]) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of captions for the toy CLIP text tower."""
    enc = make_tokenizer(add_eos=True)(captions, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _lr_at(step: int, cfg: ClipTrainConfig) -> float:
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_clip(data: WorldBatch, cfg: ClipTrainConfig) -> Any:
    """Train the toy CLIP on ``data`` (images with their captions); returns the model.

    The loss is CLIP's symmetric InfoNCE, with one change for a world of 512 distinct
    captions: pairs in a batch that share a caption are all positives (the target is
    spread over them), so identical captions are not pushed apart.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    model = make_clip(cfg)
    model.train()
    ids_CL, mask_CL = caption_tokens(all_captions())
    pixels_NCHW = normalize_pixels(data.pixels_NHWC)
    cap_N = torch.from_numpy(data.caption_ids_N)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(cap_N)
    order = torch.randperm(n, generator=gen)
    pos = 0
    bar = tqdm(range(cfg.steps), desc="toy CLIP", mininterval=2)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        cap_B = cap_N[idx]
        uniq, inverse = torch.unique(cap_B, return_inverse=True)
        # fp32: at these widths bf16 autocast is slower on CPU (casts dominate the matmuls)
        out = model(
            input_ids=ids_CL[uniq], attention_mask=mask_CL[uniq], pixel_values=pixels_NCHW[idx]
        )
        logits_BU = out.logits_per_image.float()  # [B, unique captions]
        target_BU = F.one_hot(inverse, len(uniq)).float()
        loss_img = F.cross_entropy(logits_BU, target_BU)
        # text -> image: every image with that caption is a positive
        loss_txt = F.cross_entropy(logits_BU.T, target_BU.T / target_BU.sum(0, keepdim=True).T)
        loss = (loss_img + loss_txt) / 2
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log.debug("clip step %d loss %.4f", step, loss.item())
    model.eval()
    return model


def clip_embed_images(model: Any, pixels_NHWC: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Unit-norm image embeddings ``[N, projection_dim]`` (float32)."""
    import torch

    out = []
    with torch.no_grad():
        for lo in range(0, len(pixels_NHWC), batch_size):
            x = normalize_pixels(pixels_NHWC[lo : lo + batch_size])
            emb = model.get_image_features(pixel_values=x)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).numpy())
    return np.concatenate(out)


def clip_embed_texts(model: Any, texts: list[str]) -> np.ndarray:
    """Unit-norm text embeddings ``[len(texts), projection_dim]`` (float32)."""
    import torch

    ids, mask = caption_tokens(texts)
    with torch.no_grad():
        emb = model.get_text_features(input_ids=ids, attention_mask=mask)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
