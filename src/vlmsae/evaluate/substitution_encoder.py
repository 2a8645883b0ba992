"""Substitution in an image encoder (CLIP, SigLIP, DINOv2): final embeddings per variant and
the metrics computed from them (cosine to the original, k-NN and zero-shot accuracy).

Each rank runs its share of the images (:func:`vlmsae.core.dist.shard`); sums are
all-reduced and k-NN gathers every rank's embeddings, so every rank ends with the numbers of
the whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.evaluate.substitution_hooks import (
    VARIANTS,
    TokenSubstitution,
    dataset_mean,
    substitute_rows,
)

if TYPE_CHECKING:
    from vlmsae.encoders.adapters import Encoder
    from vlmsae.encoders.tokens import TokenSelection
    from vlmsae.sae import SAE

Batches = Callable[[], Iterable[Any]]
"""A fresh iterator over this rank's :class:`vlmsae.encoders.loader.ImageBatch` es."""
SCORED = ("original", "sae", "zero", "mean")
SIM_DIGITS = 1e5
"""k-NN similarities are rounded to 1e-5 (float noise is not a neighbour's distance)."""


class Identity(NamedTuple):
    """The identity check: reconstruction + error against the untouched model."""

    max_abs_error: float
    """Largest absolute difference of any final output."""
    max_abs_output: float
    """Largest absolute final output of the untouched model (the scale of the error)."""

    def update(self, identity_BO: torch.Tensor, original_BO: torch.Tensor) -> Identity:
        """This check with one more batch of outputs."""
        if not original_BO.numel():
            return self
        err = float((identity_BO.float() - original_BO.float()).abs().max())
        scale = float(original_BO.float().abs().max())
        return Identity(max(self.max_abs_error, err), max(self.max_abs_output, scale))

    def over_ranks(self) -> Identity:
        """The maxima over every rank."""
        both = dist.all_reduce(torch.tensor(self, dtype=torch.float64), op="max")
        return Identity(float(both[0]), float(both[1]))


class Outputs(NamedTuple):
    """What the variants of this rank's images computed."""

    out_VN: dict[str, torch.Tensor]
    """Per scored variant (:data:`SCORED`), ``[N_local, E]`` float32 embeddings on CPU."""
    index_N: np.ndarray
    """``int64 [N_local]`` dataset index of each row."""
    n_skipped: int
    """Images of this rank's share that could not be read."""
    identity: Identity
    """The identity check over this rank's images."""


@torch.inference_mode()
def encoder_outputs(
    sae: SAE,
    encoder: Encoder,
    batches: Batches,
    layer: int | None,
    selection: TokenSelection | None,
    *,
    replay: bool = True,
) -> Outputs:
    """Final embeddings of every scored variant for this rank's images, and the identity
    check (:data:`~vlmsae.evaluate.substitution_hooks.VARIANTS`).

    ``layer`` None substitutes the final embedding itself (``post_projection``): one pass,
    and the variants are functions of the original embedding. ``replay``: the variants after
    the original compute only the blocks after the hook (see :class:`TokenSubstitution`)."""
    out: dict[str, list[torch.Tensor]] = {v: [] for v in SCORED}
    index: list[np.ndarray] = []
    n_skipped, identity = 0, Identity(0.0, 0.0)
    if layer is None:
        for batch in batches():
            n_skipped += len(batch.skipped)
            if batch.pixel_values is not None:
                out["original"].append(encoder.embed(batch.pixel_values).float().cpu())
                index.append(batch.index)
        orig_NE = _cat(out["original"], encoder.d_embed).to(encoder.device)
        mean_E = _global_mean(orig_NE.cpu()).to(orig_NE)
        for v in SCORED[1:]:
            out[v] = [substitute_rows(orig_NE, v, sae, mean_E).float().cpu()]
        identity = identity.update(substitute_rows(orig_NE, "identity", sae, mean_E), orig_NE)
    else:
        mean_D = dataset_mean(encoder, batches(), layer, selection).to(encoder.device)
        assert selection is not None
        hook = TokenSubstitution(encoder, layer, selection, sae, mean_D, replay=replay)
        with hook:
            for batch in batches():
                n_skipped += len(batch.skipped)
                if batch.pixel_values is None:
                    continue
                index.append(batch.index)
                emb = {}
                for v in VARIANTS:  # "original" first: the others replay its prefix
                    with hook.running(v):
                        emb[v] = encoder.embed(batch.pixel_values).float().cpu()
                identity = identity.update(emb.pop("identity"), emb["original"])
                for v in SCORED:
                    out[v].append(emb[v])
    outs = {v: _cat(rows, encoder.d_embed) for v, rows in out.items()}
    index_N = np.concatenate(index) if index else np.zeros(0, np.int64)
    return Outputs(outs, index_N, n_skipped, identity)


def _cat(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.cat(rows) if rows else torch.zeros(0, width)


def _global_mean(x_ND: torch.Tensor) -> torch.Tensor:
    total = torch.cat([x_ND.double().sum(0), torch.tensor([float(x_ND.shape[0])])])
    dist.all_reduce(total)
    if total[-1] == 0:
        raise UserError("none of the images could be read: no dataset mean")
    return (total[:-1] / total[-1]).float()


def sum_over_ranks(*values: float) -> list[float]:
    """``values`` summed over ranks (float64)."""
    return dist.all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()


def mean_cosine(out_VN: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over images of the cosine between each variant's embedding and the original's
    (a zero embedding has cosine 0 to everything)."""
    unit = {v: F.normalize(out_VN[v].double(), dim=-1) for v in SCORED}
    sums = [float((unit[v] * unit["original"]).sum(-1).sum()) for v in SCORED]
    *totals, n = sum_over_ranks(*sums, float(out_VN["original"].shape[0]))
    return {v: total / n for v, total in zip(SCORED, totals, strict=True)}


def zero_shot_accuracy(
    out_VN: dict[str, torch.Tensor], labels_N: np.ndarray, text_CE: torch.Tensor
) -> tuple[dict[str, float], int]:
    """Accuracy of classifying each embedding as the class whose text embedding is the most
    similar (labels outside ``0..C-1`` are left out); also the number of images scored."""
    valid_N = torch.as_tensor((labels_N >= 0) & (labels_N < text_CE.shape[0]))
    target_N = torch.as_tensor(labels_N)[valid_N]
    text_CE = F.normalize(text_CE.float(), dim=-1)
    hits = [
        float((F.normalize(out_VN[v][valid_N], dim=-1) @ text_CE.T).argmax(1).eq(target_N).sum())
        for v in SCORED
    ]
    *hits, n = sum_over_ranks(*hits, float(valid_N.sum()))
    accuracy = {v: h / n if n else float("nan") for v, h in zip(SCORED, hits, strict=True)}
    return accuracy, int(n)


def knn_accuracy(
    out_VN: dict[str, torch.Tensor], labels_N: np.ndarray, k: int
) -> tuple[dict[str, float], int]:
    """Leave-one-out k-NN accuracy of each variant's embeddings among themselves (cosine;
    majority vote, ties to the class with the larger summed similarity; similarities rounded
    to 1e-5, equal ones in dataset order), over the images with a label (>= 0); also the
    number of such images."""
    accuracy: dict[str, float] = {}
    n = 0
    for v in SCORED:
        unit_NE = dist.all_gather_rows(F.normalize(out_VN[v], dim=-1))
        label_N = dist.all_gather_rows(torch.as_tensor(labels_N, dtype=torch.int64))
        keep = label_N >= 0
        hits, n = _knn_hits(unit_NE[keep], label_N[keep], k)
        accuracy[v] = hits / n if n >= 2 else float("nan")
    return accuracy, n


def _knn_hits(unit_NE: torch.Tensor, label_N: torch.Tensor, k: int) -> tuple[float, int]:
    """Correct leave-one-out predictions over every rank (each rank scores its share of the
    queries against all images) and the number of images."""
    n = unit_NE.shape[0]
    if n < 2:
        return 0.0, n
    k = min(k, n - 1)
    n_classes = int(label_N.max()) + 1
    hits = 0
    queries = dist.shard(n)
    for lo in range(queries.start, queries.stop, 1024):
        hi = min(lo + 1024, queries.stop)
        # rounded: neighbours whose similarities differ by float noise only are ties, broken
        # by dataset order (a stable sort), so the batch sizes and the ranks do not matter
        sim_QN = torch.round((unit_NE[lo:hi] @ unit_NE.T).double() * SIM_DIGITS) / SIM_DIGITS
        sim_QN[torch.arange(hi - lo), torch.arange(lo, hi)] = -float("inf")  # leave one out
        top_sim_QK, top_QK = (t[:, :k] for t in sim_QN.sort(dim=1, descending=True, stable=True))
        # one vote per neighbour; its similarity (< 1/k in all) breaks ties between classes
        weight_QK = 1 + (1 + top_sim_QK) / (2 * (k + 1))
        votes_QC = torch.zeros(hi - lo, n_classes, dtype=torch.float64)
        votes_QC.scatter_add_(1, label_N[top_QK], weight_QK)
        hits += int(votes_QC.argmax(1).eq(label_N[lo:hi]).sum())
    return sum_over_ranks(float(hits))[0], n


def text_embeddings(model: Any, tokenizer: Any, texts: Sequence[str], family: str) -> torch.Tensor:
    """``[C, E]`` text embeddings of a CLIP or SigLIP model (SigLIP pads to its fixed
    length, as it was trained)."""
    padding = "max_length" if family == "siglip" else True
    enc = tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.get_text_features(**{k: v.to(device) for k, v in enc.items()})
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return emb.float().cpu()
