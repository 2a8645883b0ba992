"""The toy LLaVA: a tiny HF ``LlavaForConditionalGeneration`` trained on the world's QA.

Its vision tower is the toy CLIP's vision model (frozen), read at
``vision_feature_layer=-2`` without the CLS token (``"default"`` strategy), then LLaVA's
two-layer GELU projector and a small Llama decoder. Training follows LLaVA-1.5:

0. the decoder learns the language of the world from text alone (it stands in for the
   pretrained LLM that LLaVA starts from);
1. feature alignment: only the projector trains, on captioning;
2. visual instruction tuning: projector and decoder train on all QA pairs.

The frozen tower's features are computed once per image; each step then runs exactly
what ``LlavaModel.forward`` does after the tower (project, scatter into the ``<image>``
positions, decode), so the trained model runs unchanged through ``generate``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from vlmsae.toyworld.batches import WorldBatch, make_image_processor
from vlmsae.toyworld.tokenizer import EOS, IMAGE, LLAVA_CHAT_TEMPLATE, PAD, llava_prompt
from vlmsae.toyworld.tokenizer import make_tokenizer as _make_tokenizer
from vlmsae.toyworld.worlds import World, get_world

log = logging.getLogger(__name__)

VISION_FEATURE_LAYER = -2
IGNORE = -100


@dataclass(frozen=True)
class LlavaTrainConfig:
    """Size and training schedule of the toy LLaVA."""

    lm_width: int = 128
    """Hidden width of the Llama decoder."""
    lm_layers: int = 4
    """Decoder blocks."""
    text_steps: int = 150
    """Stage 0: text-only steps of the decoder."""
    align_steps: int = 150
    """Stage 1: projector-only steps on captioning."""
    tune_steps: int = 500
    """Stage 2: projector + decoder steps on all QA pairs."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate of every stage (warm-up, cosine decay)."""
    seed: int = 0
    """Seed of the weights and the batch order."""

    def __post_init__(self) -> None:
        if self.lm_width % 32 != 0:
            raise ValueError(f"lm_width must be a multiple of 32, got {self.lm_width}")
        if min(self.lm_layers, self.batch_size) < 1:
            raise ValueError("lm_layers and batch_size must be >= 1")
        if min(self.text_steps, self.align_steps, self.tune_steps) < 0:
            raise ValueError("step counts must be >= 0")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


def make_llava_processor(patch_size: int, world: str | World | None = None) -> Any:
    """The real ``LlavaProcessor`` of the toy LLaVA (PIL image processor, word tokenizer)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=make_image_processor(),
        tokenizer=_make_tokenizer(add_eos=False, world=world),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def make_llava(clip: Any, cfg: LlavaTrainConfig, world: str | World | None = None) -> Any:
    """A ``LlavaForConditionalGeneration`` around ``clip.vision_model``; random decoder."""
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = _make_tokenizer(add_eos=False, world=world)
    vcfg = clip.config.vision_config
    text_config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.lm_width,
        intermediate_size=2 * cfg.lm_width,
        num_hidden_layers=cfg.lm_layers,
        num_attention_heads=cfg.lm_width // 32,
        num_key_value_heads=cfg.lm_width // 32,
        max_position_embeddings=128,
        pad_token_id=tok.convert_tokens_to_ids(PAD),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        tie_word_embeddings=True,
    )
    n_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vcfg.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tok.convert_tokens_to_ids(IMAGE),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=VISION_FEATURE_LAYER,
        image_seq_length=n_patches,
        tie_word_embeddings=True,
    )
    config.vision_config.model_type = "clip_vision_model"
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.generation_config.pad_token_id = text_config.pad_token_id
    model.generation_config.eos_token_id = text_config.eos_token_id
    return model


def vision_features(model: Any, pixel_values_NCHW: Any, batch_size: int = 256) -> Any:
    """The frozen tower's features at ``vision_feature_layer`` without CLS ``[N, P, D]``."""
    import torch

    tower = model.model.vision_tower
    out = []
    with torch.no_grad():
        for lo in range(0, len(pixel_values_NCHW), batch_size):
            x = pixel_values_NCHW[lo : lo + batch_size]
            hs = tower(pixel_values=x, output_hidden_states=True).hidden_states
            out.append(hs[VISION_FEATURE_LAYER][:, 1:].float())
    return torch.cat(out)


class Sequences(NamedTuple):
    """Token sequences of (image, question, answer) triples, right-padded."""

    input_ids_BT: Any
    labels_BT: Any
    """``input_ids`` on answer tokens (and the closing ``</s>``), ``-100`` elsewhere."""
    attention_mask_BT: Any


def make_sequences(
    records: list,
    questions: list[str],
    n_image_tokens: int,
    with_image: bool = True,
    world: str | World | None = None,
) -> Sequences:
    """Tokenise ``USER: <image>\\n{q} ASSISTANT: {a}</s>`` with the image token expanded."""
    import torch

    tok = _make_tokenizer(add_eos=False, world=world)
    image_id, eos_id = tok.convert_tokens_to_ids(IMAGE), tok.convert_tokens_to_ids(EOS)
    rows, labels = [], []
    for r, q in zip(records, questions, strict=True):
        prompt = tok(llava_prompt(q))["input_ids"]
        if with_image:
            at = prompt.index(image_id)
            prompt = prompt[:at] + [image_id] * n_image_tokens + prompt[at + 1 :]
        else:
            prompt = [t for t in prompt if t != image_id]
        answer = dict(r.qa_pairs())[q]
        ans = tok(answer, add_special_tokens=False)["input_ids"] + [eos_id]
        rows.append(prompt + ans)
        labels.append([IGNORE] * len(prompt) + ans)
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(row)] = 1
    return Sequences(ids, lab, mask)


def sequence_loss(model: Any, seq: Sequences, feats_BPD: Any | None) -> Any:
    """Mean next-token loss on answer tokens; what ``LlavaModel.forward`` does after the tower."""
    import torch.nn.functional as F

    inner = model.model
    embeds_BTD = inner.get_input_embeddings()(seq.input_ids_BT)
    if feats_BPD is not None:
        image_BPD = inner.multi_modal_projector(feats_BPD).to(embeds_BTD.dtype)
        mask_BT1 = (seq.input_ids_BT == model.config.image_token_id).unsqueeze(-1)
        embeds_BTD = embeds_BTD.masked_scatter(mask_BT1, image_BPD)
    hidden = inner.language_model(
        inputs_embeds=embeds_BTD, attention_mask=seq.attention_mask_BT
    ).last_hidden_state
    logits_BTV = model.lm_head(hidden[:, :-1]).float()
    return F.cross_entropy(logits_BTV.flatten(0, 1), seq.labels_BT[:, 1:].flatten())


def _run_stage(name: str, model: Any, params: list, steps: int, batch_fn, cfg) -> None:
    import torch

    from vlmsae.core.progress import tqdm

    if steps == 0:
        return
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)
    bar = tqdm(range(steps), desc=f"toy LLaVA {name}", unit="step", mininterval=2)
    for step in bar:
        lr = cfg.lr * min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        seq, feats = batch_fn(step)
        loss = sequence_loss(model, seq, feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    log.info("toy LLaVA %s: final loss %.4f", name, loss.item())


def train_llava(data: WorldBatch, clip: Any, cfg: LlavaTrainConfig) -> Any:
    """Train the toy LLaVA on ``data`` in LLaVA's stages; returns the model."""
    import torch

    world = get_world(data.world)
    questions_all = world.questions
    model = make_llava(clip, cfg, data.world)
    feats_NPD = vision_features(model, data.pixel_values_NCHW)
    n_tokens = feats_NPD.shape[1]
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.records)

    def batch(questions: list[str] | None, with_image: bool):
        def fn(step: int):
            idx = torch.randint(n, (cfg.batch_size,), generator=gen)
            recs = [data.records[i] for i in idx.tolist()]
            qs = questions or [
                questions_all[int(j)]
                for j in torch.randint(len(questions_all), (len(recs),), generator=gen)
            ]
            qs = qs * (len(recs) // len(qs))
            seq = make_sequences(recs, qs, n_tokens, with_image, data.world)
            return seq, (feats_NPD[idx] if with_image else None)

        return fn

    model.requires_grad_(False)
    model.train()
    lm = model.model.language_model
    lm_params = [*lm.parameters()]  # lm_head is tied to the input embedding
    proj_params = [*model.model.multi_modal_projector.parameters()]
    for p in lm_params + proj_params:
        p.requires_grad_(True)
    _run_stage("text", model, lm_params, cfg.text_steps, batch(None, False), cfg)
    for p in lm_params:
        p.requires_grad_(False)
    _run_stage(
        "align", model, proj_params, cfg.align_steps, batch([world.caption_question], True), cfg
    )
    for p in lm_params:
        p.requires_grad_(True)
    _run_stage("tune", model, lm_params + proj_params, cfg.tune_steps, batch(None, True), cfg)
    model.requires_grad_(True)
    model.eval()
    return model
