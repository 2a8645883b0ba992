"""What a caching run will write, decided and validated before any file is touched: one
:class:`Plan` per store, the SAE's code store checked against what it is applied to, and
``random:N`` checked against the model's token count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmsae.core.errors import UserError
from vlmsae.data.provenance import check_same_source
from vlmsae.encoders.adapters import Encoder
from vlmsae.encoders.codes import sae_source
from vlmsae.encoders.tokens import TokenSelection
from vlmsae.sae.checkpoint import sae_provenance

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE


@dataclass(frozen=True)
class Plan:
    """A store to write, fully validated before any file is touched."""

    name: str
    key: int | str  # block index or "post_projection"
    d: int
    kind: str
    meta: dict[str, Any]
    sae: Any = None  # write SAE codes instead of the activations


def check_token_count(enc: Encoder, selection: TokenSelection, layer: int) -> None:
    """Refuse ``random:N`` with more tokens than the model makes per image (one forward of a
    blank image up to ``layer``: the count depends on the processor's crop, not the config)."""
    from PIL import Image

    pixel_values = enc.preprocess([Image.new("RGB", (224, 224))])
    n_tokens = int(enc.image_tokens(enc.capture(pixel_values, [layer])[layer]).shape[1])
    if selection.n > n_tokens:
        raise UserError(
            f"--tokens {selection} asks for {selection.n} tokens per image, but {enc.name} makes "
            f"{n_tokens} per image; choose random:N with N <= {n_tokens}, or --tokens all"
        )


def _load_sae(sae: SAE | str | Path) -> tuple[Any, dict[str, Any]]:
    """An SAE object and its provenance: ``sae_provenance`` of a vlmsae checkpoint folder
    (local, or the hub snapshot an id resolved to; ``sae`` names it as given), else the
    fields of the SAE's config (an in-memory SAE, or one converted from another format)."""
    given = type(sae).__name__
    if isinstance(sae, (str, Path)):
        from vlmsae.formats.hub import detect_format
        from vlmsae.sae import SAE

        given, sae = str(sae), SAE.load(sae)
        local = getattr(sae, "local_dir", None)
        if local is not None and detect_format(Path(local)) == "vlmsae":
            return sae, {**sae_provenance(local), "sae": given}
    cfg = getattr(sae, "cfg", None)
    prov = {k: getattr(cfg, k, None) for k in ("model", "hookpoint", "layer", "tokens", "d_in")}
    return sae, {"sae": given, **{k: v for k, v in prov.items() if v is not None}}


def sae_plan(
    enc: Encoder,
    sae: SAE | str | Path,
    hookpoint: int | str | None,
    plans: list[Plan],
    allow_mismatch: bool,
) -> Plan:
    """The code store of ``sae``, at a hook point that is among ``plans``, after checking
    that the SAE was trained on what it is applied to."""
    sae, sae_prov = _load_sae(sae)
    key = hookpoint if hookpoint is not None else sae_source(sae)
    if key is None:
        if len(plans) != 1:
            raise UserError(
                "the SAE does not say which hook point it was trained on and several are "
                "cached: pass --sae-hookpoint (a layer or 'post_projection')"
            )
        key = plans[0].key
    key = key if key == "post_projection" else enc.layer_index(int(key))
    source = next((p for p in plans if p.key == key), None)
    if source is None:
        raise UserError(
            f"the SAE reads hook point {key!r}, which this run does not cache; "
            f"add it (--layer {key} or --hookpoint post_projection)"
        )
    d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
    if d_in is not None and int(d_in) != source.d:
        raise UserError(
            f"the SAE reads vectors of width {d_in}, but {source.name} of {enc.name} has width "
            f"{source.d}; use an SAE trained on this model and hook point"
        )
    target_prov = {**source.meta, "d": source.d}
    what = f"the activations at {source.name} of {enc.name}"
    check_same_source(sae_prov, target_prov, f"SAE {sae_prov['sae']}", what,
                      allow_mismatch=allow_mismatch)  # fmt: skip
    if hasattr(sae, "to"):
        sae.to(enc.device)
    if hasattr(sae, "eval"):
        sae.eval()  # BatchTopK encodes per example (its threshold) outside training
    d_sae = int(getattr(getattr(sae, "cfg", None), "d_sae", 0)) or _probe_width(sae, source.d, enc)
    meta = {**source.meta, **{k: sae_prov.get(k) for k in ("sae", "sae_sha256")}}
    return Plan(f"codes_{source.name}", key, d_sae, "codes", meta, sae=sae)


def _probe_width(sae: SAE, d_in: int, enc: Encoder) -> int:
    with torch.inference_mode():
        return int(sae.encode(torch.zeros(1, d_in, device=enc.device)).shape[-1])
