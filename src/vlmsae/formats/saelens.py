"""SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``), both ways.

SAELens 6 computes ``pre = (x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc`` (after an
optional input normalisation) and ``x_hat = codes @ W_dec + b_dec``, with the same tensor
names and shapes as vlmsae. Architectures map as follows:

====================  =========================================================
vlmsae                SAELens (inference class)
====================  =========================================================
``relu``              ``standard`` (ReLU)
``topk``              ``topk`` (``k``; ``rescale_acts_by_decoder_norm`` false)
``jumprelu``          ``jumprelu`` (``relu(pre) · [pre > θ]``, θ per latent)
``batchtopk``         ``jumprelu`` with θ = the learned global threshold for every
                      latent: at inference a BatchTopK SAE keeps ``pre > θ``, which is
                      exactly what SAELens itself saves its BatchTopK SAEs as
Matryoshka            as its sparsity; the group sizes do not exist in SAELens and are
                      kept in ``metadata.vlmsae`` only (codes and reconstructions equal)
====================  =========================================================

A BatchTopK SAE without a threshold yet (untrained) encodes by per-example top-k in vlmsae
and is exported as ``topk``. On import, ``metadata.vlmsae`` (written by
:func:`export_saelens`) restores the vlmsae config exactly; any other SAELens SAE maps back
by the table, refusing what vlmsae cannot compute (other architectures, input
normalisations other than ``none``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from vlmsae.core.errors import SAELensFormatError
from vlmsae.core.io import atomic_write, ensure_dir, write_json
from vlmsae.sae.config import SAEConfig

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_VERSION = "6.0.0"  # the SAELens config schema written here (SAELens >= 6 reads it)
_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def saelens_architecture(sae: SAE) -> tuple[str, str | None]:
    """The SAELens architecture ``sae`` is written as, and a one-line note when the
    mapping drops or changes something a reader should know (else None)."""
    cfg: SAEConfig = sae.cfg
    if cfg.sparsity == "batchtopk" and not sae.has_threshold:
        return "topk", (
            "this BatchTopK SAE has no inference threshold yet (vlmsae encodes it by per-example "
            "top-k): written as SAELens 'topk'"
        )
    arch = _ARCH[cfg.sparsity]
    notes = []
    if cfg.sparsity == "batchtopk":
        notes.append(
            "BatchTopK is written as SAELens 'jumprelu' with its global threshold on every "
            "latent (what it computes at inference; SAELens saves its own BatchTopK SAEs so)"
        )
    if cfg.is_matryoshka:
        notes.append(
            f"SAELens has no Matryoshka groups: sizes {list(cfg.group_sizes)} are kept only in "
            "metadata.vlmsae (codes and reconstructions are unchanged)"
        )
    return arch, "; ".join(notes) or None


def export_saelens(sae: SAE, out: str | Path) -> str | None:
    """Write ``sae`` in SAELens's format into folder ``out``; returns the mapping note
    (see :func:`saelens_architecture`), which the CLI prints."""
    out = ensure_dir(out)
    cfg: SAEConfig = sae.cfg
    arch, note = saelens_architecture(sae)
    tensors = {k: sae.state_dict()[k].detach().float().cpu() for k in ("W_dec", "b_enc", "b_dec")}
    tensors["W_enc"] = sae.W_enc.detach().float().cpu()
    if arch == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().float().cpu().expand(cfg.d_sae)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    config: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": FORMAT_VERSION,
            "model_name": cfg.model,
            "hook_name": _hook_name(cfg),
            "prepend_bos": False,
            "vlmsae": {"config": cfg.to_dict(), "path": str(getattr(sae, "path", "") or "")},
        },
    }
    if arch == "topk":
        config.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    write_json(out / CFG_FILE, config)
    return note


def _hook_name(cfg: SAEConfig) -> str | None:
    """TransformerLens-style name of the hook point (a ViT block output is its residual
    stream after the MLP: ``blocks.L.hook_resid_post``)."""
    if cfg.hookpoint == "post_mlp_residual" and cfg.layer is not None:
        return f"blocks.{cfg.layer}.hook_resid_post"
    return cfg.hookpoint


def load_saelens(folder: str | Path) -> Any:
    """An :class:`~vlmsae.SAE` computing what the SAELens SAE in ``folder`` computes."""
    from vlmsae.sae.model import SAE

    folder = Path(folder)
    try:
        config = json.loads((folder / CFG_FILE).read_text())
        sd = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAELensFormatError(f"{folder}: unreadable SAELens files ({e})") from e
    meta = config.get("metadata") or {}
    ours = (meta.get("vlmsae") or {}).get("config") if isinstance(meta, dict) else None
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    if missing := [k for k in names if k not in sd]:
        raise SAELensFormatError(f"{folder / WEIGHTS_FILE} lacks {missing}: not an SAELens SAE")
    params = {k: sd[k].to(torch.float64) for k in names}
    cfg = _config(config, sd, params, ours, meta, folder)
    threshold = sd.get("threshold")
    if (
        cfg.sparsity == "batchtopk"
        and threshold is not None
        and bool(threshold.ne(threshold[0]).any())
    ):
        # edited in SAELens since vlmsae wrote it: no longer one global threshold
        log.warning("%s: per-latent thresholds differ: loading it as a JumpReLU SAE", folder)
        cfg = dataclasses.replace(cfg, sparsity="jumprelu", k=None)
    if cfg.sparsity == "batchtopk":
        params["threshold"] = (
            threshold.reshape(-1)[0].reshape(()) if threshold is not None else (torch.tensor(-1.0))
        )
    elif cfg.sparsity == "jumprelu":
        params["threshold"] = threshold
    with torch.device("meta"):
        sae = SAE(cfg)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in params.items()}
    tensors["W_enc"] = tensors["W_enc"].t().contiguous().t()  # the SAE's [d_sae, d_in] storage
    sae.load_state_dict(tensors, assign=True)
    return sae.eval()


def _config(
    config: dict[str, Any],
    sd: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor],
    ours: dict[str, Any] | None,
    meta: dict[str, Any],
    folder: Path,
) -> SAEConfig:
    """The vlmsae config (and, in place, the weights folded to vlmsae's equations)."""
    arch = config.get("architecture", "standard")
    if config.get("normalize_activations", "none") not in ("none", None, False):
        raise SAELensFormatError(
            f"{folder}: normalize_activations={config['normalize_activations']!r} rescales inputs "
            "at run time, which vlmsae SAEs do not do; fold it into the weights in SAELens first"
        )
    if config.get("reshape_activations", "none") != "none":
        raise SAELensFormatError(f"{folder}: reshape_activations is not supported by vlmsae")
    if ours is not None:
        return SAEConfig.from_dict(ours)
    if not config.get("apply_b_dec_to_input", True):  # pre = x W + b: fold b_dec into b_enc
        params["b_enc"] = params["b_enc"] + params["b_dec"] @ params["W_enc"]
    d_in, d_sae = params["W_enc"].shape
    source = {"model": meta.get("model_name") or None}
    if arch == "standard":
        return SAEConfig(d_in=d_in, d_sae=d_sae, sparsity="relu", **source)
    if arch == "jumprelu":
        if "threshold" not in sd:
            raise SAELensFormatError(f"{folder}: a jumprelu SAE without a threshold tensor")
        return SAEConfig(d_in=d_in, d_sae=d_sae, sparsity="jumprelu", **source)
    if arch == "topk":
        if config.get("rescale_acts_by_decoder_norm"):  # codes × ‖W_dec‖, decode ÷ ‖W_dec‖
            norm_S = params["W_dec"].norm(dim=-1)
            params["W_enc"] = params["W_enc"] * norm_S
            params["b_enc"] = params["b_enc"] * norm_S
            params["W_dec"] = params["W_dec"] / norm_S[:, None]
        return SAEConfig(d_in=d_in, d_sae=d_sae, sparsity="topk", k=int(config["k"]), **source)
    raise SAELensFormatError(
        f"{folder}: SAELens architecture {arch!r} has no vlmsae equivalent (vlmsae reads "
        "standard, topk and jumprelu)"
    )
