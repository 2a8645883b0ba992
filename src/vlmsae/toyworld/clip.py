"""The toy CLIP: a tiny HF ``CLIPModel`` trained contrastively on the world's captions."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmsae.toyworld.batches import MODEL_IMAGE_SIZE, WorldBatch, make_image_processor
from vlmsae.toyworld.tokenizer import EOS, PAD, make_tokenizer
from vlmsae.toyworld.worlds import World, get_world

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
    """ViT patch side in pixels (32x32 model input -> 16 patches + CLS)."""
    projection_dim: int = 128
    """Width of the shared image-text embedding."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 128
    """Image-caption pairs per step."""
    group_size: int = 0
    """Hard negatives: a batch is made of groups of this many images that share colour
    and size, so that only shape and background tell their captions apart (shapes world
    only; 0 = plain
    random batches; the concept captions already give shape and background a direct
    signal, and grouping did not speed training up in our runs)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the weights and the batch order."""

    def __post_init__(self) -> None:
        if self.width % 32 != 0:
            raise ValueError(f"width must be a multiple of 32 (heads of 32), got {self.width}")
        if MODEL_IMAGE_SIZE % self.patch_size != 0:
            raise ValueError(f"patch_size must divide {MODEL_IMAGE_SIZE}, got {self.patch_size}")
        if min(self.layers, self.text_layers, self.steps, self.batch_size) < 1:
            raise ValueError("layers, text_layers, steps and batch_size must be >= 1")
        if self.group_size < 0 or (self.group_size and self.batch_size % self.group_size):
            raise ValueError(
                f"group_size must be 0 or divide batch_size={self.batch_size}, "
                f"got {self.group_size}"
            )
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


def make_clip(cfg: ClipTrainConfig, world: str | World | None = None) -> Any:
    """A randomly initialised tiny ``CLIPModel`` for ``world`` (default: the default world)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = make_tokenizer(add_eos=True, world=world)
    heads = cfg.width // 32
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=cfg.width,
            intermediate_size=2 * cfg.width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=heads,
            max_position_embeddings=get_world(world).text_positions,
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
            image_size=MODEL_IMAGE_SIZE,
            patch_size=cfg.patch_size,
            hidden_act="gelu",  # one fused op; quick_gelu's mul+sigmoid doubles CPU step time
        ),
        projection_dim=cfg.projection_dim,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def make_clip_processor(world: str | World | None = None) -> Any:
    """The ``CLIPProcessor`` of the toy CLIP (PIL image processor; no torchvision)."""
    from transformers import CLIPProcessor

    return CLIPProcessor(
        image_processor=make_image_processor(),
        tokenizer=make_tokenizer(add_eos=True, world=world),
    )


def caption_tokens(captions: list[str], world: str | World | None = None) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of captions for the toy CLIP text tower."""
    tok = make_tokenizer(add_eos=True, world=world)
    enc = tok(captions, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _concept_targets(data: WorldBatch) -> list[tuple[str, int, Any]]:
    """Per attribute CLIP names: ``(attribute, number of values, targets)``, where the
    targets are class indices ``[N]`` (one value per image) or, in a world where images
    show several objects, probabilities spread over the values present ``[N, V]``."""
    import torch

    world = get_world(data.world)
    prompts, attrs = world.concept_prompts(), list(world.attributes)
    out = []
    for name, ps in prompts.items():
        if not world.several_objects:
            out.append((name, len(ps), torch.from_numpy(data.labels_NA[:, attrs.index(name)])))
            continue
        values = {v: i for i, v in enumerate(world.attributes[name])}
        target_NV = torch.zeros(len(data.records), len(ps))
        for i, r in enumerate(data.records):
            present = world.concepts(r)[name]
            for v in present:
                target_NV[i, values[v]] = 1.0 / len(present)
        out.append((name, len(ps), target_NV))
    return out


def _features(out: Any) -> Any:
    """``get_*_features`` return a tensor in some transformers versions, an output in others."""
    return out if hasattr(out, "ndim") else out.pooler_output


def _text_features(model: Any, ids_TL: Any, mask_TL: Any) -> Any:
    import torch.nn.functional as F

    return F.normalize(_features(model.get_text_features(input_ids=ids_TL, attention_mask=mask_TL)))


def _lr_at(step: int, cfg: ClipTrainConfig) -> float:
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _batch_sampler(data: WorldBatch, cfg: ClipTrainConfig):
    """A function returning the next batch's image indices (deterministic from the seed)."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.caption_ids_N)
    if not cfg.group_size:
        return lambda: torch.randint(n, (cfg.batch_size,), generator=gen)
    attrs = get_world(data.world).attributes
    if not {"color", "size"} <= set(attrs):
        raise ValueError(f"group_size needs a world with colours and sizes, not {data.world!r}")
    color_col, size_col = list(attrs).index("color"), list(attrs).index("size")
    key_N = data.labels_NA[:, color_col] * len(attrs["size"]) + data.labels_NA[:, size_col]
    pools = [torch.from_numpy(np.flatnonzero(key_N == k)) for k in np.unique(key_N)]

    def sample():
        groups = []
        for k in torch.randint(len(pools), (cfg.batch_size // cfg.group_size,), generator=gen):
            pool = pools[int(k)]
            groups.append(pool[torch.randint(len(pool), (cfg.group_size,), generator=gen)])
        return torch.cat(groups)

    return sample


def train_clip(data: WorldBatch, cfg: ClipTrainConfig, model: Any = None) -> Any:
    """Train the toy CLIP on ``data`` (images with their captions); returns the model.

    ``model``: continue training this CLIP (a fresh optimizer and warmup/cosine schedule
    over ``cfg.steps``) instead of a new one from ``make_clip(cfg)``; the build uses it for
    its later phases.

    The loss is CLIP's symmetric InfoNCE, with one change for a world of 512 distinct
    captions: pairs in a batch that share a caption are all positives (the target is
    spread over them), so identical captions are not pushed apart.
    """
    import torch
    import torch.nn.functional as F

    from vlmsae.core.progress import tqdm

    world = get_world(data.world)
    model = make_clip(cfg, world) if model is None else model
    model.train()
    captions, prompts = data.captions, world.concept_prompts()
    prompt_texts = [p for ps in prompts.values() for p in ps]
    one_table = world.all_captions() is not None
    if one_table:  # few captions (every one listed): one table, captions then prompts
        ids_TL, mask_TL = caption_tokens(captions + prompt_texts, world)
        prompt_ids = torch.arange(len(captions), len(ids_TL))
    else:  # many long captions: prompts get their own, shorter, padding
        ids_TL, mask_TL = caption_tokens(captions, data.world)
        pr_ids_PL, pr_mask_PL = caption_tokens(prompt_texts, data.world)
    targets = _concept_targets(data)
    cap_N = torch.from_numpy(data.caption_ids_N)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    sample = _batch_sampler(data, cfg)
    bar = tqdm(range(cfg.steps), desc="toy CLIP", unit="step", mininterval=2)
    for step in bar:
        idx = sample()
        uniq, inverse = torch.unique(cap_N[idx], return_inverse=True)
        # fp32: at these widths bf16 autocast is slower on CPU (casts dominate the matmuls)
        img_BE = F.normalize(
            _features(model.get_image_features(pixel_values=data.pixel_values_NCHW[idx]))
        )
        if one_table:
            texts = torch.cat([uniq, prompt_ids])
            txt_TE = _text_features(model, ids_TL[texts], mask_TL[texts])
        else:
            txt_TE = torch.cat(
                [
                    _text_features(model, ids_TL[uniq], mask_TL[uniq]),
                    _text_features(model, pr_ids_PL, pr_mask_PL),
                ]
            )
        logits_BT = model.logit_scale.exp() * img_BE @ txt_TE.T
        logits_BU = logits_BT[:, : len(uniq)]  # full captions
        target_BU = F.one_hot(inverse, len(uniq)).float()
        loss_img = F.cross_entropy(logits_BU, target_BU)
        # text -> image: every image with that caption is a positive
        loss_txt = F.cross_entropy(logits_BU.T, target_BU.T / target_BU.sum(0, keepdim=True).T)
        # concept captions ("a star"): image -> text over the values of each attribute
        lo, loss_concepts = len(uniq), 0.0
        for _, n_values, target in targets:
            loss_concepts = loss_concepts + F.cross_entropy(
                logits_BT[:, lo : lo + n_values], target[idx]
            )
            lo += n_values
        loss_concepts = loss_concepts / len(targets)
        loss = (loss_img + loss_txt) / 2 + loss_concepts
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        if step % 25 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", concepts=f"{loss_concepts.item():.3f}")
            log.debug("clip step %d loss %.4f", step, loss.item())
    model.eval()
    return model
