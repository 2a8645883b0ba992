"""Substitution in LLaVA's vision tower: the next-token distribution after a fixed prompt and
the greedy answer, per variant.

Every image gets the same prompt, so the prompt is tokenised once (with a blank image, which
fixes the number of image tokens) and each batch reuses its ids with the batch's pixels; one
greedy generation per variant gives both the first-step logits (for the KL divergence) and the
answer (for agreement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from vlmsae.evaluate.substitution_encoder import SCORED, Batches, Identity, sum_over_ranks
from vlmsae.evaluate.substitution_hooks import VARIANTS, TokenSubstitution, dataset_mean
from vlmsae.steer.llava import prepare_inputs

if TYPE_CHECKING:
    from vlmsae.encoders.tokens import TokenSelection
    from vlmsae.sae import SAE
    from vlmsae.steer.llava import Llava

DEFAULT_QUESTION = "Describe the image."
"""The question asked about every image when no prompt is given."""
ANSWER_TOKENS = 10
"""Greedy answer length compared for answer agreement."""


def _prompt_ids(llava: Llava, question: str) -> dict[str, torch.Tensor]:
    from PIL import Image

    inputs = prepare_inputs(llava, [Image.new("RGB", (224, 224))], [question])
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def _stop_ids(llava: Llava) -> tuple[set[int], int]:
    tokenizer = llava.processor.tokenizer
    gen = llava.model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
    return eos_ids, pad if pad is not None else next(iter(eos_ids))


class LlavaOutputs(NamedTuple):
    """What the variants of this rank's images computed."""

    kl_sum: dict[str, float]
    """Per scored variant, the sum over images of KL(original ‖ variant), nats."""
    answers: dict[str, list[tuple[int, ...]]]
    """Per scored variant, each image's greedy answer (token ids, cut after the end of
    sequence)."""
    n_images: int
    """Images of this rank's share that were read."""
    n_skipped: int
    """Images of this rank's share that could not be read."""
    identity: Identity
    """The identity check on the first-step logits."""


@torch.inference_mode()
def llava_outputs(
    sae: SAE,
    llava: Llava,
    batches: Batches,
    layer: int,
    selection: TokenSelection,
    question: str,
) -> LlavaOutputs:
    """KL sums and greedy answers of every scored variant for this rank's images (the
    vocabulary-wide logits are reduced batch by batch, never kept)."""
    encoder = llava.encoder
    mean_D = dataset_mean(encoder, batches(), layer, selection).to(encoder.device)
    prompt = _prompt_ids(llava, question)
    eos_ids, pad_id = _stop_ids(llava)
    kl_sum = dict.fromkeys(SCORED, 0.0)
    answers: dict[str, list[tuple[int, ...]]] = {v: [] for v in SCORED}
    n_images = n_skipped = 0
    identity = Identity(0.0, 0.0)
    with TokenSubstitution(encoder, layer, selection, sae, mean_D) as hook:
        for batch in batches():
            n_skipped += len(batch.skipped)
            if batch.pixel_values is None:
                continue
            b = len(batch.index)
            n_images += b
            inputs = {k: v.to(llava.device).expand(b, -1) for k, v in prompt.items()}
            pixels = batch.pixel_values.to(device=llava.device, dtype=llava.dtype)
            logits_VBV = {}
            for v in VARIANTS:
                with hook.running(v):
                    out = llava.model.generate(
                        **inputs,
                        pixel_values=pixels,
                        do_sample=False,
                        num_beams=1,
                        max_new_tokens=ANSWER_TOKENS,
                        pad_token_id=pad_id,
                        output_logits=True,
                        return_dict_in_generate=True,
                    )
                logits_VBV[v] = out.logits[0].double().cpu()  # the first answer token's
                new_BT = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
                if v != "identity":
                    answers[v] += [_cut(row, eos_ids) for row in new_BT]
            identity = identity.update(logits_VBV.pop("identity"), logits_VBV["original"])
            logp = {v: torch.log_softmax(x, dim=-1) for v, x in logits_VBV.items()}
            p_BV = logp["original"].exp()
            for v in SCORED:
                kl_sum[v] += float((p_BV * (logp["original"] - logp[v])).sum())
    return LlavaOutputs(kl_sum, answers, n_images, n_skipped, identity)


def _cut(row: list[int], eos_ids: set[int]) -> tuple[int, ...]:
    end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
    return tuple(row[:end])


def kl_divergence(out: LlavaOutputs) -> dict[str, float]:
    """Mean over every rank's images of KL(original ‖ variant) of the next-token
    distribution (nats)."""
    *totals, n = sum_over_ranks(*(out.kl_sum[v] for v in SCORED), float(out.n_images))
    return {v: t / n if n else float("nan") for v, t in zip(SCORED, totals, strict=True)}


def answer_agreement(out: LlavaOutputs) -> dict[str, float]:
    """Fraction of every rank's images whose greedy answer equals the untouched model's,
    token for token."""
    orig = out.answers["original"]
    same = [float(sum(a == o for a, o in zip(out.answers[v], orig, strict=True))) for v in SCORED]
    *totals, n = sum_over_ranks(*same, float(len(orig)))
    return {v: t / n if n else float("nan") for v, t in zip(SCORED, totals, strict=True)}


def check_reads(llava: Llava, layer: int) -> None:
    """Refuse a block LLaVA never reads (substitution there changes nothing)."""
    from vlmsae.core.errors import UserError

    enc = llava.encoder
    if not enc.affects_output(layer):
        raise UserError(
            f"block {enc.layer_index(layer)} of {enc.name} is never read by the language model "
            f"(it reads blocks {enc.read_layers}): substituting an SAE there changes nothing; "
            "use an SAE trained at a block up to the one LLaVA reads"
        )
