"""Substitution: the model with the SAE spliced in, against the untouched model and ablations.

At the SAE's hook point the activations it was trained on are replaced by its reconstruction
and the rest of the model runs (what is replaced for ``cls``, ``mean``, ``all``, ``random:N``
and ``post_projection``: :mod:`vlmsae.evaluate.substitution_hooks`). Two ablations of the same
activations give the scale: ``zero`` (replaced by 0) and ``mean`` (by their dataset mean).
Each metric is reported per variant and as the fraction recovered,
``(SAE − ablation) / (original − ablation)``: 1 = as good as the untouched model, 0 = no better
than the ablation.

- image encoders (CLIP, SigLIP, DINOv2 with and without registers): the cosine between each
  variant's final embedding and the original; leave-one-out k-NN accuracy of the embeddings on
  the dataset's labels; for CLIP and SigLIP with a text tower, zero-shot accuracy with the
  class names.
- LLaVA: KL(original ‖ variant) of the next-token distribution after a fixed prompt, and the
  agreement of the greedy answers with the untouched model's.
- the identity check: reconstruction + SAE error substituted gives back the original outputs.

Runs under ``torchrun``: each rank takes a contiguous share of the images, sums are
all-reduced, and every rank returns the whole dataset's result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.evaluate.substitution_hooks import ABLATIONS
from vlmsae.evaluate.substitution_run import SaeSite, measure, sae_site

if TYPE_CHECKING:
    from vlmsae.data.images import ImageDataset
    from vlmsae.encoders.adapters import Encoder
    from vlmsae.sae import SAE
    from vlmsae.steer.llava import Llava

log = logging.getLogger(__name__)
VARIANT_COLUMNS = ("original", "sae", "zero", "mean")
METRICS = {
    "cosine": "cosine to the original final embedding",
    "knn_accuracy": "k-NN accuracy of the final embeddings",
    "zero_shot_accuracy": "zero-shot accuracy with the class names",
    "kl_divergence": "KL(original ‖ variant) of the next token, nats",
    "answer_agreement": "greedy answer equal to the original's",
}
"""Every metric substitution may report, with what it measures."""


def fraction_recovered(original: float, sae: float, ablation: float) -> float:
    """``(sae - ablation) / (original - ablation)``; NaN when undefined (a NaN input, or an
    ablation that leaves the metric at its original value)."""
    denom = original - ablation
    if any(math.isnan(x) for x in (original, sae, ablation)):
        return float("nan")
    if abs(denom) <= 1e-12 * max(1.0, abs(original)):
        return float("nan")
    return (sae - ablation) / denom


def _none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class SubstitutionResult:
    """What substituting an SAE into its model did, per metric and variant."""

    model: str
    """Model id or folder."""
    family: str
    """``clip``, ``siglip``, ``dinov2`` or ``llava``."""
    hookpoint: str
    """``post_mlp_residual`` or ``post_projection``."""
    layer: int | None
    """Block index (0-based) of ``post_mlp_residual``; None for ``post_projection``."""
    tokens: str | None
    """The SAE's token selection (``cls``, ``mean``, ``all``, ``random:N``)."""
    substitution: str
    """What was replaced, in words."""
    n_images: int
    """Images measured."""
    n_skipped: int
    """Images that could not be read."""
    values: Mapping[str, Mapping[str, float]]
    """Metric -> variant (``original``, ``sae``, ``zero``, ``mean``) -> value (NaN: undefined)."""
    recovered: Mapping[str, Mapping[str, float]]
    """Metric -> ablation (``zero``, ``mean``) -> fraction recovered (NaN: undefined)."""
    identity_max_abs_error: float
    """Largest |output with reconstruction + error − original output| (embeddings, or
    LLaVA's next-token logits): float rounding only."""
    identity_max_abs_output: float
    """Largest |original output|: the scale of that error."""
    undefined: Mapping[str, str]
    """Why a value is NaN, keyed ``metric/variant`` or ``metric/recovered/ablation``."""
    not_measured: Mapping[str, str]
    """Metrics that do not apply here, with the reason."""
    k_nn: int
    """Neighbours of the k-NN accuracy."""
    prompt: str | None
    """LLaVA's question, or the zero-shot text template (``{}`` = class name)."""
    seconds: float
    """Wall time."""

    def to_dict(self) -> dict[str, Any]:
        """Every number at full precision, JSON-safe: NaN is None, with its reason in
        ``undefined``."""
        return {
            "model": self.model,
            "family": self.family,
            "hookpoint": self.hookpoint,
            "layer": self.layer,
            "tokens": self.tokens,
            "substitution": self.substitution,
            "n_images": self.n_images,
            "n_skipped": self.n_skipped,
            "k_nn": self.k_nn,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "metrics": {m: {v: _none(x) for v, x in row.items()} for m, row in self.values.items()},
            "fraction_recovered": {
                m: {a: _none(x) for a, x in row.items()} for m, row in self.recovered.items()
            },
            "identity": {
                "max_abs_error": self.identity_max_abs_error,
                "max_abs_output": self.identity_max_abs_output,
            },
            "undefined": dict(self.undefined),
            "not_measured": dict(self.not_measured),
        }

    def summary_lines(self) -> list[str]:
        """One screen for people (numbers to 3 significant digits)."""
        from vlmsae.core.numbers import fmt

        where = "post_projection" if self.layer is None else f"block {self.layer}"
        tokens = f", tokens {self.tokens}" if self.tokens else ""
        lines = [
            f"substitution into {self.model} ({self.family}) at {where}{tokens}: "
            f"{self.n_images} images ({self.n_skipped} skipped)",
            f"replaced: {self.substitution}",
            "",
            f"{'metric':<20}" + "".join(f"{c:>10}" for c in VARIANT_COLUMNS)
            + "".join(f"{'rec. ' + a:>12}" for a in ABLATIONS),
        ]  # fmt: skip
        for m, row in self.values.items():
            cells = "".join(f"{fmt(row[c]):>10}" for c in VARIANT_COLUMNS)
            rec = "".join(f"{fmt(self.recovered[m][a]):>12}" for a in ABLATIONS)
            lines.append(f"{m:<20}{cells}{rec}")
        lines += [
            "(rec. = fraction recovered, (sae − ablation) / (original − ablation); - = undefined)",
            f"identity check (reconstruction + error): max |Δ| = "
            f"{fmt(self.identity_max_abs_error)} of outputs up to "
            f"{fmt(self.identity_max_abs_output)}",
        ]
        lines += [f"undefined {k}: {why}" for k, why in self.undefined.items()]
        lines += [f"not measured {k}: {why}" for k, why in self.not_measured.items()]
        return lines


def plot_recovered(result: SubstitutionResult, path: str | Path) -> Path:
    """A bar chart of the fraction recovered per metric and ablation (PNG at ``path``, with
    SVG and PDF beside it); undefined fractions are marked ``n/a``."""
    from vlmsae.report.figures import pyplot, save_figure

    plt = pyplot()
    metrics = list(result.recovered)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * max(1, len(metrics)), 3.2))
    width = 0.8 / len(ABLATIONS)
    for j, ablation in enumerate(ABLATIONS):
        xs = np.arange(len(metrics)) + (j - (len(ABLATIONS) - 1) / 2) * width
        ys = [result.recovered[m][ablation] for m in metrics]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width, label=f"vs {ablation}")
        for x, y in zip(xs, ys, strict=True):
            if math.isnan(y):
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=8)
    ax.set_ylabel("fraction recovered")
    where = "post_projection" if result.layer is None else f"block {result.layer}"
    ax.set_title(f"SAE substituted at {where} ({result.tokens or 'embedding'})", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def run_substitution(
    sae: SAE,
    model: Encoder | Llava,
    dataset: ImageDataset,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    k_nn: int = 5,
    tokenizer: Any = None,
    workers: int = 0,
    replay: bool = True,
) -> SubstitutionResult:
    """:func:`evaluate_substitution` on a loaded model (an :class:`Encoder`, or a
    :class:`~vlmsae.steer.llava.Llava`) and a listed dataset.

    ``tokenizer``: the text tokenizer of a CLIP / SigLIP model with a text tower, for the
    zero-shot accuracy (None: not measured). ``workers``: image-decoding processes.
    ``replay`` (image encoders): the variants after the original reuse its blocks up to the
    hook instead of recomputing them (same numbers, fewer forwards; False: for checking)."""
    start = time.perf_counter()
    if batch_size < 1 or k_nn < 1:
        raise UserError(f"batch_size and k_nn must be >= 1, got {batch_size} and {k_nn}")
    site = sae_site(sae, model)
    labels_N = np.asarray(dataset.labels if labels is None else list(labels), dtype=np.int64)
    if len(labels_N) != len(dataset):
        raise UserError(f"got {len(labels_N)} labels for {len(dataset)} images; give one per image")
    names = list(dataset.classes if class_names is None else class_names)
    m = measure(sae, model, site, dataset.keys, labels_N, names, prompt,
                batch_size=batch_size, k_nn=k_nn, tokenizer=tokenizer, workers=workers,
                replay=replay, reader=dataset.open_reader())  # fmt: skip
    recovered, undefined = {}, dict(m.undefined)
    for metric, row in m.values.items():
        recovered[metric] = {}
        for a in ABLATIONS:
            recovered[metric][a] = fraction_recovered(row["original"], row["sae"], row[a])
            if math.isnan(recovered[metric][a]) and f"{metric}/recovered/{a}" not in undefined:
                undefined[f"{metric}/recovered/{a}"] = _why_undefined(metric, row, a)
    return SubstitutionResult(
        model=site.model_name,
        family=site.family,
        hookpoint=site.hookpoint,
        layer=site.layer,
        tokens=None if site.selection is None else str(site.selection),
        substitution=site.describe(),
        n_images=m.n_images,
        n_skipped=m.n_skipped,
        values=m.values,
        recovered=recovered,
        identity_max_abs_error=m.identity.max_abs_error,
        identity_max_abs_output=m.identity.max_abs_output,
        undefined=undefined,
        not_measured=m.not_measured,
        k_nn=k_nn,
        prompt=m.prompt,
        seconds=time.perf_counter() - start,
    )


def _why_undefined(metric: str, row: Mapping[str, float], ablation: str) -> str:
    if any(math.isnan(row[v]) for v in ("original", "sae", ablation)):
        return f"{metric} itself is undefined"
    return (
        f"the {ablation} ablation leaves {metric} at its original value ({row['original']!r}): "
        "there is nothing to recover"
    )


def evaluate_substitution(
    sae: SAE,
    model: str | Path,
    data: str | Path,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    device: str = "cpu",
    k_nn: int = 5,
) -> SubstitutionResult:
    """Substitute ``sae`` into ``model`` at the hook point it was trained on, over the
    images of ``data``, and measure what is recovered (see the module docstring).

    Args:
        sae: the SAE; its config names the hook point, layer and token selection.
        model: hub id or folder of a CLIP, SigLIP, DINOv2 or LLaVA model.
        data: a ``--data`` source (:func:`vlmsae.data.sources.open_source`: an image folder,
            ``hf:ORG/NAME``, a ``save_to_disk`` folder, Parquet files, WebDataset shards).
        labels: a class index per image (default: the folder's classes; < 0 = unlabelled).
        class_names: names of the classes for zero-shot accuracy (default: the folder's).
        prompt: LLaVA's question (default :data:`~vlmsae.evaluate.substitution_llava.
            DEFAULT_QUESTION`); for CLIP / SigLIP the zero-shot text template, ``{}`` standing
            for the class name (default ``"a photo of a {}."``).
        batch_size: images per forward (each batch runs 5 forwards: original, SAE, two
            ablations and the identity check).
        limit: use the first ``limit`` images only.
        device: where to run the model and the SAE.
        k_nn: neighbours of the k-NN accuracy.
    """
    from vlmsae.core.cpu import default_workers
    from vlmsae.data.sources import open_source

    try:
        dataset = open_source(data, limit=limit)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot read the images of {data}: {e}") from e
    loaded, tokenizer = _load_model(str(model), device)
    share = len(dist.shard(len(dataset)))
    workers = 0 if share <= 4 * batch_size else min(default_workers(), 4)
    return run_substitution(sae, loaded, dataset, labels=labels, class_names=class_names,
                            prompt=prompt, batch_size=batch_size, k_nn=k_nn, tokenizer=tokenizer,
                            workers=workers)  # fmt: skip


def _load_model(name: str, device: str) -> tuple[Any, Any]:
    """The model (an Encoder or a Llava) and, for a CLIP / SigLIP with a text tower, its
    tokenizer (None when it has none)."""
    from vlmsae.encoders.adapters import Encoder
    from vlmsae.encoders.hub import load_model_config

    if getattr(load_model_config(name, None), "model_type", None) == "llava":
        from vlmsae.steer.llava import load_llava

        return load_llava(name, device=device), None
    try:
        encoder = Encoder.from_pretrained(name, device=device)
    except ValueError as e:
        raise UserError(f"cannot load {name}: {e}") from e
    if not hasattr(encoder.model, "get_text_features"):
        return encoder, None
    try:
        from transformers import AutoTokenizer

        return encoder, AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError) as e:
        log.warning("%s: no tokenizer (%s); zero-shot accuracy is not measured", name, e)
        return encoder, None


__all__ = [
    "METRICS",
    "SaeSite",
    "SubstitutionResult",
    "evaluate_substitution",
    "fraction_recovered",
    "plot_recovered",
    "run_substitution",
]
