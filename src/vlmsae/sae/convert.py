"""Import dictionary_learning checkpoints (``ae.pt``), as written by the paper's code.

Key layouts recognised (``S`` = dictionary size, ``D`` = input width):

- ``BatchTopKSAE`` / ``AutoEncoderTopK``: ``encoder.weight [S, D]``, ``encoder.bias``,
  ``decoder.weight [D, S]``, ``b_dec``, ``k``, ``threshold``; codes
  ``relu(W (x - b_dec) + b)`` then batch top-k / threshold, or per-example top-k.
- ``MatroyshkaBatchTopKSAE``: ``W_enc [D, S]``, ``b_enc``, ``W_dec [S, D]``, ``b_dec``,
  ``k``, ``threshold``, ``group_sizes``; codes ``relu((x - b_dec) W_enc + b_enc)``.
- ``AutoEncoder`` (ReLU): ``encoder.weight``, ``encoder.bias``, ``decoder.weight``,
  ``bias``; codes ``relu(W (x - bias) + b)``, reconstruction ``W_d f + bias``.
- ``JumpReluAutoEncoder``: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold [S]``;
  codes ``relu(p · [p > θ])`` with ``p = x W_enc + b_enc``.

The file is read with ``torch.load(weights_only=True)``: no code is unpickled. JumpReLU
does not subtract ``b_dec`` before encoding; its ``b_enc`` becomes ``b_enc + b_dec W_enc``
so that the converted SAE computes exactly the same function.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae.errors import UserError
from vlmsae.sae.checkpoint import describe_nonfinite
from vlmsae.sae.config import SAEConfig
from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)

# dictionary_learning ``dict_class`` names -> our sparsity (the paper's code spells
# Matryoshka "Matroyshka" in some versions).
DICT_CLASSES = {
    "BatchTopKSAE": "batchtopk",
    "AutoEncoderTopK": "topk",
    "MatroyshkaBatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "batchtopk",
    "AutoEncoder": "relu",
    "JumpReluAutoEncoder": "jumprelu",
}


class ConvertError(UserError):
    """The file is not a dictionary_learning state dict this converter understands."""


def _dict_class_from_config(ae_path: Path) -> tuple[str | None, dict[str, Any]]:
    """dictionary_learning writes ``config.json`` next to ``ae.pt`` (and above the
    ``checkpoints/ae_<step>.pt`` it saves during training); use its class name."""
    config_path = ae_path.parent / "config.json"
    if not config_path.exists() and ae_path.parent.name == "checkpoints":
        config_path = ae_path.parent.parent / "config.json"
    if not config_path.exists():
        return None, {}
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable %s: %s", config_path, e)
        return None, {}
    trainer = config.get("trainer", {}) if isinstance(config, dict) else {}
    if not isinstance(trainer, dict):
        raise ConvertError(
            f"{config_path}: 'trainer' is a {type(trainer).__name__}, not the object "
            "dictionary_learning writes (with dict_class, layer, lm_name); fix the file, or "
            "move it away and give --arch, --model and --layer yourself"
        )
    return trainer.get("dict_class"), trainer


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


def _layout(sd: dict[str, Tensor], dict_class: str | None, sparsity: str | None) -> dict[str, Any]:
    """Our parameters and config fields from one of the known key layouts."""
    keys = set(sd)
    if {"encoder.weight", "encoder.bias", "decoder.weight"} <= keys:
        b_dec = sd["b_dec"] if "b_dec" in sd else sd.get("bias")
        if b_dec is None:
            raise ConvertError("encoder/decoder layout without b_dec or bias")
        if "k" not in sd:  # the standard ReLU AutoEncoder
            kind, k = "relu", None
        else:
            k = int(sd["k"])
            threshold = float(sd["threshold"]) if "threshold" in sd else -1.0
            kind = sparsity or DICT_CLASSES.get(dict_class or "", "")
            if kind not in ("topk", "batchtopk"):
                kind = "batchtopk" if threshold >= 0 else "topk"
        params = {
            "W_enc": sd["encoder.weight"].t(),
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["decoder.weight"].t(),
            "b_dec": b_dec,
        }
        if kind == "batchtopk":
            params["threshold"] = sd.get("threshold", torch.tensor(-1.0)).reshape(())
        return {"params": params, "sparsity": kind, "k": k, "group_sizes": None}
    if {"W_enc", "b_enc", "W_dec", "b_dec"} <= keys:
        threshold = sd.get("threshold")
        if (threshold is not None and threshold.numel() > 1) or "k" not in sd:
            if threshold is None:
                raise ConvertError("W_enc layout without k or threshold: unknown architecture")
            # JumpReLU encodes x (not x - b_dec): fold b_dec into the encoder bias.
            b_enc = sd["b_enc"].double() + sd["b_dec"].double() @ sd["W_enc"].double()
            params = {**{k: sd[k] for k in ("W_enc", "W_dec", "b_dec")}, "b_enc": b_enc}
            params["threshold"] = threshold
            return {"params": params, "sparsity": "jumprelu", "k": None, "group_sizes": None}
        params = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        params["threshold"] = sd.get("threshold", torch.tensor(-1.0)).reshape(())
        sizes = tuple(int(s) for s in sd["group_sizes"].tolist()) if "group_sizes" in sd else None
        kind = sparsity or "batchtopk"
        if kind == "topk":
            params.pop("threshold")
        return {"params": params, "sparsity": kind, "k": int(sd["k"]), "group_sizes": sizes}
    raise ConvertError(
        f"unrecognised dictionary_learning state dict (keys: {sorted(keys)}); expected the "
        "BatchTopKSAE / AutoEncoderTopK, Matryoshka, AutoEncoder or JumpReluAutoEncoder layout"
    )


def convert_dictionary_learning(
    ae_path: str | Path, *, sparsity: str | None = None, **source: Any
) -> SAE:
    """Build an :class:`SAE` from a dictionary_learning ``ae.pt``.

    Args:
        ae_path: the ``ae.pt`` file (its sibling ``config.json``, when present, names the
            class and the source layer / model).
        sparsity: force ``topk`` or ``batchtopk`` where the layout cannot tell them apart
            (default: the class in ``config.json``, else BatchTopK when a threshold is set).
        source: provenance for the config (``model``, ``hookpoint``, ``layer``, ``tokens``).
    """
    ae_path = Path(ae_path)
    if not ae_path.is_file():
        raise FileNotFoundError(f"{ae_path} does not exist")
    try:
        sd = torch.load(ae_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise ConvertError(f"{ae_path} is not a weights-only torch checkpoint: {e}") from e
    if not isinstance(sd, dict):
        raise ConvertError(f"{ae_path} holds a {type(sd).__name__}, not a state dict")
    dict_class, trainer = _dict_class_from_config(ae_path)
    layout = _layout(sd, dict_class, sparsity)
    params = {name: _f32(t) for name, t in layout["params"].items()}
    if problem := describe_nonfinite(params):
        raise ConvertError(
            f"{ae_path} holds non-finite weights ({problem}): the training diverged or the file "
            "is damaged; convert an earlier checkpoint"
        )
    d_in, d_sae = params["W_enc"].shape
    if trainer.get("layer") is not None:
        source.setdefault("layer", trainer["layer"])
    if trainer.get("lm_name"):
        source.setdefault("model", trainer["lm_name"])
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        sparsity=layout["sparsity"],
        k=layout["k"],
        group_sizes=layout["group_sizes"],
        **{k: v for k, v in source.items() if v is not None},
    )
    with torch.device("meta"):
        sae = SAE(cfg)
    params["W_enc"] = params["W_enc"].t().contiguous().t()  # the SAE's [d_sae, d_in] storage
    sae.load_state_dict(params, assign=True)
    log.info("converted %s (%s) to %s", ae_path, dict_class or "class unknown", sae)
    return sae.eval()
