"""Where an SAE is substituted (its hook point, checked against the model) and the run that
measures every variant over this rank's share of the images."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.encoders.adapters import Encoder
from vlmsae.encoders.loader import image_batches
from vlmsae.encoders.tokens import TokenSelection
from vlmsae.evaluate import substitution_encoder as enc_metrics
from vlmsae.evaluate import substitution_llava as llava_metrics

if TYPE_CHECKING:
    from vlmsae.data.sources import ImageReader
    from vlmsae.sae import SAE
    from vlmsae.steer.llava import Llava

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "a photo of a {}."
"""Zero-shot text for a class name (CLIP's ImageNet template)."""


@dataclass(frozen=True)
class SaeSite:
    """Where the SAE is substituted."""

    model_name: str
    family: str
    hookpoint: str
    layer: int | None
    """0-based block index; None at ``post_projection``."""
    selection: TokenSelection | None
    """None at ``post_projection``."""

    def describe(self) -> str:
        """What substitution replaces, in words."""
        if self.selection is None:
            return "the final embedding (post_projection) by its reconstruction"
        at = f"at block {self.layer}"
        kind = self.selection.kind
        if kind == "cls":
            return f"the CLS token {at} by its reconstruction; the other tokens are kept"
        if kind == "mean":
            return (
                f"every image token {at} shifted by recon(m) − m, m = the image's token mean "
                "(the token mean becomes its reconstruction, deviations from it are kept)"
            )
        return f"every image token {at} by its reconstruction (register tokens are kept)"


def _encoder_of(model: Encoder | Llava) -> Encoder:
    return model if isinstance(model, Encoder) else model.encoder


def sae_site(sae: SAE, model: Encoder | Llava) -> SaeSite:
    """The SAE's hook point from its config, refused with a :class:`UserError` when it does not
    fit the model (unknown hook point, layer out of range, ``cls`` without a CLS token, width)."""
    enc = _encoder_of(model)
    cfg = getattr(sae, "cfg", None)
    hookpoint = getattr(cfg, "hookpoint", None)
    layer = getattr(cfg, "layer", None)
    if hookpoint is None and layer is not None:
        hookpoint = "post_mlp_residual"
    if hookpoint not in ("post_mlp_residual", "post_projection"):
        raise UserError(
            "the SAE's config does not say which hook point it was trained on (hookpoint "
            f"{hookpoint!r}, layer {layer!r}); train it from an activation store, or set "
            "cfg.hookpoint / cfg.layer / cfg.tokens"
        )
    selection = None
    if hookpoint == "post_projection":
        if enc.family == "llava":
            raise UserError("post_projection is not defined for the vision tower inside LLaVA")
        width, index = enc.d_embed, None
    else:
        try:
            index = enc.layer_index(int(layer))
            selection = TokenSelection.parse(getattr(cfg, "tokens", None) or "")
            enc.check_tokens(selection)
        except (TypeError, ValueError) as e:
            raise UserError(f"the SAE cannot be substituted into {enc.name}: {e}") from e
        width = enc.d_model
    d_in = getattr(cfg, "d_in", None)
    if d_in is not None and int(d_in) != width:
        raise UserError(
            f"the SAE reads {d_in}-wide vectors but {hookpoint} of {enc.name} is {width} wide; "
            "use an SAE trained on this model"
        )
    trained_on = getattr(cfg, "model", None)
    if trained_on and _real(trained_on) != _real(enc.name):
        log.warning("the SAE was trained on %s, substituted into %s", trained_on, enc.name)
    return SaeSite(enc.name, enc.family, hookpoint, index, selection)


def _real(name: str) -> str:
    return os.path.realpath(name) if os.path.exists(name) else name


class Measured(NamedTuple):
    """Every metric of every variant, over the whole dataset."""

    values: dict[str, dict[str, float]]
    undefined: dict[str, str]
    not_measured: dict[str, str]
    identity: enc_metrics.Identity
    n_images: int
    n_skipped: int
    prompt: str | None


def _rank_batches(
    paths: Sequence[str],
    processor: Any,
    batch_size: int,
    workers: int,
    reader: ImageReader | None = None,
):
    """This rank's batches (a contiguous share), with dataset-wide image indices."""
    share = dist.shard(len(paths))

    def batches() -> Iterator[Any]:
        if not len(share):
            return
        yield from image_batches(paths, processor, batch_size=batch_size, workers=workers,
                                 start=share.start, stop=share.stop, reader=reader)  # fmt: skip

    return batches


def measure(
    sae: SAE,
    model: Encoder | Llava,
    site: SaeSite,
    paths: Sequence[str],
    labels_N: np.ndarray,
    class_names: Sequence[str],
    prompt: str | None,
    *,
    batch_size: int,
    k_nn: int,
    tokenizer: Any,
    workers: int,
    replay: bool = True,
    reader: ImageReader | None = None,
) -> Measured:
    """Run every variant over this rank's images and compute the metrics of the family
    (``paths``: the images' keys; ``reader`` decodes them, default the files of ``paths``)."""
    enc = _encoder_of(model)
    if site.family != "llava" and prompt is not None and "{}" not in prompt:
        raise UserError(
            f"the zero-shot prompt {prompt!r} has no '{{}}' for the class name; "
            "e.g. 'a photo of a {}.'"
        )
    if hasattr(sae, "eval"):
        sae.eval()  # BatchTopK encodes per example (its threshold) outside training
    if hasattr(sae, "to"):
        sae.to(enc.device)
    batches = _rank_batches(paths, enc.processor, batch_size, workers, reader)
    undefined: dict[str, str] = {}
    not_measured: dict[str, str] = {}
    if site.family == "llava":
        llava_metrics.check_reads(model, site.layer)
        question = prompt or llava_metrics.DEFAULT_QUESTION
        out = llava_metrics.llava_outputs(sae, model, batches, site.layer, site.selection, question)
        values = {
            "kl_divergence": llava_metrics.kl_divergence(out),
            "answer_agreement": llava_metrics.answer_agreement(out),
        }
        used_prompt: str | None = question
        n_local = out.n_images
    else:
        enc_out = enc_metrics.encoder_outputs(
            sae, enc, batches, site.layer, site.selection, replay=replay
        )
        values = {"cosine": enc_metrics.mean_cosine(enc_out.out_VN)}
        labels_local = labels_N[enc_out.index_N]
        knn, n_labelled = enc_metrics.knn_accuracy(enc_out.out_VN, labels_local, k_nn)
        values["knn_accuracy"] = knn
        if n_labelled < 2:
            undefined.update({f"knn_accuracy/{v}": "fewer than 2 labelled images" for v in knn})
        used_prompt = _zero_shot(
            values, undefined, not_measured, enc_out, labels_local, class_names, prompt,
            model=enc, tokenizer=tokenizer,
        )  # fmt: skip
        out, n_local = enc_out, len(enc_out.index_N)
    counts = enc_metrics.sum_over_ranks(float(n_local), float(out.n_skipped))
    n, n_skipped = (int(c) for c in counts)
    if n == 0:
        raise UserError(f"none of the {len(paths)} images could be read")
    identity = out.identity.over_ranks()
    return Measured(values, undefined, not_measured, identity, n, n_skipped, used_prompt)


def _zero_shot(
    values: dict[str, dict[str, float]],
    undefined: dict[str, str],
    not_measured: dict[str, str],
    out: enc_metrics.Outputs,
    labels_local: np.ndarray,
    class_names: Sequence[str],
    prompt: str | None,
    *,
    model: Encoder,
    tokenizer: Any,
) -> str | None:
    """Add zero-shot accuracy where it applies; the text template used (or None)."""
    if model.family not in ("clip", "siglip") or not hasattr(model.model, "get_text_features"):
        not_measured["zero_shot_accuracy"] = f"{type(model.model).__name__} has no text tower"
        return None
    if tokenizer is None:
        not_measured["zero_shot_accuracy"] = "no tokenizer for the text tower"
        return None
    if not class_names:
        not_measured["zero_shot_accuracy"] = "no class names (the folder has no classes)"
        return None
    template = prompt or DEFAULT_TEMPLATE
    texts = [template.format(c) for c in class_names]
    text_CE = enc_metrics.text_embeddings(model.model, tokenizer, texts, model.family)
    acc, n = enc_metrics.zero_shot_accuracy(out.out_VN, labels_local, text_CE)
    values["zero_shot_accuracy"] = acc
    if n == 0:
        undefined.update({f"zero_shot_accuracy/{v}": "no image has a class label" for v in acc})
    return template
