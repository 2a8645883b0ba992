"""dictionary_learning checkpoints (``ae.pt``), as written by the paper's code: import
(:func:`convert_dictionary_learning`) and export (:func:`export_dictionary_learning`).

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

Export dictionary_learning layout (what its ``trainSAE`` writes and its classes'
``from_pretrained`` read): ``ae.pt`` (a ``torch.save``'d state dict of tensors, in raw
activation units) and ``config.json`` ``{"trainer": {"dict_class": ..., ...}}``.

====================  ==========================  ================================
vlmsae                dictionary_learning class   keys
====================  ==========================  ================================
``batchtopk``         ``BatchTopKSAE``            ``encoder.*``, ``decoder.weight``,
                                                  ``b_dec``, ``k``, ``threshold``
``topk``              ``AutoEncoderTopK``         same (``threshold`` = -1)
Matryoshka            ``MatryoshkaBatchTopKSAE``  ``W_enc``, ``b_enc``, ``W_dec``,
                                                  ``b_dec``, ``k``, ``threshold``,
                                                  ``group_sizes``
``relu``              ``AutoEncoder``             ``encoder.*``, ``decoder.weight``,
                                                  ``bias``
``jumprelu``          ``JumpReluAutoEncoder``     ``W_enc``, ``b_enc`` (minus
                                                  ``b_dec W_enc``: it encodes ``x``,
                                                  not ``x - b_dec``), ``W_dec``,
                                                  ``b_dec``, ``threshold``
====================  ==========================  ================================
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae.core.errors import ConvertError, UserError
from vlmsae.core.io import atomic_write, ensure_dir, write_json
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


def export_dictionary_learning(sae: SAE, out: str | Path) -> str | None:
    """Write ``ae.pt`` + ``config.json`` as dictionary_learning saves them."""
    cfg: SAEConfig = sae.cfg
    dict_class, sd, note = _dl_state_dict(sae)
    trainer = {
        "dict_class": dict_class,
        "activation_dim": cfg.d_in,
        "dict_size": cfg.d_sae,
        "layer": cfg.layer,
        "lm_name": cfg.model,
        "submodule_name": cfg.hookpoint,
        "exported_by": "vlmsae",
        "vlmsae_config": cfg.to_dict(),
    }
    if cfg.k is not None and cfg.sparsity in ("topk", "batchtopk"):
        trainer["k"] = cfg.k
    if cfg.is_matryoshka:
        trainer["group_fractions"] = [s / cfg.d_sae for s in cfg.group_sizes]
    out = ensure_dir(out)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    atomic_write(out / "ae.pt", lambda p: torch.save(sd, p))
    write_json(out / "config.json", {"trainer": trainer})
    return note


def _dl_state_dict(sae: SAE) -> tuple[str, dict[str, torch.Tensor], str | None]:
    cfg: SAEConfig = sae.cfg
    f32 = {k: v.detach().float().cpu() for k, v in sae.state_dict().items()}
    w_enc_DS = sae.W_enc.detach().float().cpu()
    linear = {
        "encoder.weight": w_enc_DS.t(),
        "encoder.bias": f32["b_enc"],
        "decoder.weight": f32["W_dec"].t(),
    }
    k = torch.tensor(cfg.k or 0, dtype=torch.int32)
    no_threshold = torch.tensor(-1.0)
    if cfg.is_matryoshka:
        if cfg.sparsity != "batchtopk" or not sae.has_threshold:
            raise UserError(
                "dictionary_learning's MatryoshkaBatchTopKSAE encodes with a trained threshold; "
                f"this Matryoshka SAE ({cfg.sparsity}, threshold "
                f"{'set' if sae.has_threshold else 'not set'}) would encode differently there: "
                "export a trained Matryoshka BatchTopK SAE, or use --format saelens"
            )
        sd = {name: f32[name] for name in ("b_enc", "W_dec", "b_dec")}
        sd.update(
            W_enc=w_enc_DS,
            k=k,
            threshold=f32["threshold"].reshape(()),
            group_sizes=torch.tensor(cfg.group_sizes),
        )
        return "MatryoshkaBatchTopKSAE", sd, None
    if cfg.sparsity == "batchtopk" and sae.has_threshold:
        sd = {**linear, "b_dec": f32["b_dec"], "k": k, "threshold": f32["threshold"].reshape(())}
        return "BatchTopKSAE", sd, None
    if cfg.sparsity in ("topk", "batchtopk"):
        note = None
        if cfg.sparsity == "batchtopk":
            note = (
                "this BatchTopK SAE has no inference threshold yet (vlmsae encodes it by "
                "per-example top-k): written as dictionary_learning's AutoEncoderTopK"
            )
        sd = {**linear, "b_dec": f32["b_dec"], "k": k, "threshold": no_threshold}
        return "AutoEncoderTopK", sd, note
    if cfg.sparsity == "relu":
        return "AutoEncoder", {**linear, "bias": f32["b_dec"]}, None
    # JumpReLU: dictionary_learning computes x W_enc + b_enc (no b_dec centring).
    b_enc = (sae.b_enc.double() - sae.b_dec.double() @ sae.W_enc.double()).float().cpu()
    sd = {"W_enc": w_enc_DS, "b_enc": b_enc, "W_dec": f32["W_dec"], "b_dec": f32["b_dec"]}
    sd["threshold"] = f32["threshold"]
    return "JumpReluAutoEncoder", sd, None
