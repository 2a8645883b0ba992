"""Export a vlmsae SAE to another library's format: SAELens or dictionary_learning.

``export_sae(sae, out, fmt)`` writes the files and returns a one-line note where the
format cannot express something (the CLI prints it); where the other library would compute
something different, it refuses with a :class:`~vlmsae.errors.UserError` instead.

dictionary_learning layout (what its ``trainSAE`` writes and its classes'
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

from pathlib import Path
from typing import Any

import torch

from vlmsae._io import atomic_write, ensure_dir, write_json
from vlmsae.errors import UserError
from vlmsae.sae.config import SAEConfig

FORMATS = ("saelens", "dictionary_learning")


def export_sae(sae: Any, out: str | Path, fmt: str) -> str | None:
    """Write ``sae`` into folder ``out`` in format ``fmt`` (one of :data:`FORMATS`);
    returns a note on what the format cannot express, or None."""
    if fmt == "saelens":
        from vlmsae.sae.saelens import export_saelens

        return export_saelens(sae, out)
    if fmt == "dictionary_learning":
        return export_dictionary_learning(sae, out)
    raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def export_dictionary_learning(sae: Any, out: str | Path) -> str | None:
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


def _dl_state_dict(sae: Any) -> tuple[str, dict[str, torch.Tensor], str | None]:
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
