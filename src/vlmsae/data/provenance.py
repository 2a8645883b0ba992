"""Provenance of artifacts and the checks that two artifacts fit together.

Every artifact records what it was made from: the model (id and revision), hook point,
layer and token selection, the dataset root and split, and a fingerprint of its ordered
image list (``images_sha256`` + ``n_images``). Commands that combine two artifacts call
the ``check_*`` functions here *before* computing anything; a mismatch raises
:class:`~vlmsae.core.errors.UserError` naming both sides (or, where the user passed
``--allow-mismatch``, logs it as a warning). Artifacts written before fingerprints existed
still load: what cannot be checked is logged as a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsae.core.errors import UserError
from vlmsae.data.locate import is_key

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore

log = logging.getLogger(__name__)

SOURCE_FIELDS = ("model", "revision", "hookpoint", "layer", "tokens")
"""What a set of activations was computed by (an SAE must be applied to the same)."""
DATA_FIELDS = ("dataset_root", "split")
IMAGE_FIELDS = ("images_sha256", "n_images")
PROVENANCE_FIELDS = SOURCE_FIELDS + DATA_FIELDS + IMAGE_FIELDS
MISMATCH_HINT = "pass --allow-mismatch to combine them anyway"


def image_fingerprint(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """``{"images_sha256", "n_images"}`` of an ordered image list.

    The hash is the SHA-256 of the JSON-encoded list of absolute paths, so that a store
    cached with ``--data toy`` and one with ``--data /abs/toy`` of the same files agree.
    Source keys (``tar:SHARD#MEMBER``, ``hf:NAME@SPLIT#ROW``: :mod:`vlmsae.data.sources`)
    are hashed as they are: they name their source, so stores of two sources never agree.
    """
    absolute = [p if is_key(p) else os.path.abspath(p) for p in map(os.fspath, paths)]
    digest = hashlib.sha256(json.dumps(absolute).encode("utf-8")).hexdigest()
    return {"images_sha256": digest, "n_images": len(absolute)}


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (identifies an SAE's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def store_provenance(store: ActivationStore) -> dict[str, Any]:
    """The provenance fields of an :class:`~vlmsae.data.store.ActivationStore`.

    A store written before fingerprints existed gets one computed from its image list
    (when it has one); ``store`` and ``d`` name the store and its width.
    """
    meta = store.manifest
    prov = {k: meta.get(k) for k in PROVENANCE_FIELDS if meta.get(k) is not None}
    prov.update(store=str(store.dir), kind=store.kind, d=store.d, n_layers=meta.get("n_layers"))
    if "images_sha256" not in prov:
        images = store.images
        if images:
            prov.update(image_fingerprint(images))
    for key in ("sae", "sae_sha256"):  # a code store: which SAE made the codes
        if meta.get(key) is not None:
            prov[key] = meta[key]
    return prov


def _describe_images(p: Mapping[str, Any]) -> str:
    n = p.get("n_images", "?")
    where = f" of {p['dataset_root']}" if p.get("dataset_root") else ""
    split = f" split {p['split']}" if p.get("split") else ""
    sha = f" (fingerprint {p['images_sha256'][:12]})" if p.get("images_sha256") else ""
    return f"{n} images{where}{split}{sha}"


def _warn(message: str) -> None:
    log.warning("%s", message)


def check_same_images(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    what_a: str,
    what_b: str,
    *,
    allow_mismatch: bool | None = None,
) -> None:
    """Refuse two artifacts that do not list the same images in the same order.

    ``a`` and ``b`` are provenance dicts (:func:`store_provenance`, or the ``images``
    block of a top-images / scores summary). ``allow_mismatch`` is the command's
    ``--allow-mismatch`` (``None``: it has none, so the message does not offer it).
    Without fingerprints on both sides the split and image count are compared where
    known, and a warning says what was not checked.
    """
    fa, fb = a.get("images_sha256"), b.get("images_sha256")
    if fa and fb:
        differs = fa != fb
    else:
        missing = what_a if not fa else what_b
        _warn(
            f"{missing} records no image fingerprint (written by an older vlmsae): cannot "
            f"check that {what_a} and {what_b} hold the same images in the same order"
        )
        differs = any(
            a.get(k) is not None and b.get(k) is not None and a[k] != b[k]
            for k in ("split", "n_images")
        )
        if not differs:
            return
    if not differs:
        return
    message = (
        f"{what_a} and {what_b} do not hold the same images in the same order: {what_a} has "
        f"{_describe_images(a)}, {what_b} has {_describe_images(b)}"
    )
    if allow_mismatch:
        _warn(f"{message} (--allow-mismatch)")
        return
    raise UserError(
        f"{message}; make both from the same --data, --split, --limit and --every"
        + (f", or {MISMATCH_HINT}" if allow_mismatch is not None else "")
    )


def _norm_model(name: Any) -> Any:
    """A local model folder by its real path (``models/clip`` == ``/abs/models/clip``)."""
    if isinstance(name, str) and os.path.exists(name):
        return os.path.realpath(name)
    return name


def _norm_layer(layer: Any, n_layers: Any) -> Any:
    if isinstance(layer, int) and layer < 0 and isinstance(n_layers, int):
        return layer % n_layers
    return layer


def _norm_tokens(tokens: Any) -> Any:
    """``random:N`` samples the same token distribution as ``all`` (patch rows)."""
    return "all" if isinstance(tokens, str) and tokens.startswith("random:") else tokens


def source_differences(sae: Mapping[str, Any], store: Mapping[str, Any]) -> list[str]:
    """``"field SAE-value vs store-value"`` for every source field both sides record and
    that differs (model folders compared by real path, negative layers resolved,
    ``random:N`` tokens taken as ``all``)."""
    out = []
    for key in SOURCE_FIELDS:
        x, y = sae.get(key), store.get(key)
        if x is None or y is None:
            continue
        if key == "model":
            x, y = _norm_model(x), _norm_model(y)
        if key == "tokens":
            x, y = _norm_tokens(x), _norm_tokens(y)
        if key == "layer":
            x, y = _norm_layer(x, store.get("n_layers")), _norm_layer(y, store.get("n_layers"))
        if x != y:
            out.append(f"{key} {sae[key]} vs {store[key]}")
    return out


def check_same_source(
    sae: Mapping[str, Any],
    store: Mapping[str, Any],
    what_sae: str,
    what_store: str,
    *,
    allow_mismatch: bool | None = None,
) -> None:
    """Refuse to apply an SAE to activations of another model, hook point, layer or token
    selection than it was trained on (a warning with ``allow_mismatch``; ``None``: the
    command has no ``--allow-mismatch``), and always refuse a width other than ``d_in``."""
    d_in, d = sae.get("d_in"), store.get("d")
    if d_in is not None and d is not None and int(d_in) != int(d):
        raise UserError(
            f"{what_sae} reads {d_in}-wide activations (d_in) but {what_store} holds rows of "
            f"width {d}; use a store of the hook point the SAE was trained on"
        )
    if not any(sae.get(k) is not None for k in SOURCE_FIELDS):
        _warn(f"{what_sae} records no source (model, hook point, layer): cannot check it fits")
        return
    diffs = source_differences(sae, store)
    if not diffs:
        return
    message = f"{what_sae} does not fit {what_store}: {', '.join(diffs)} (SAE vs activations)"
    if allow_mismatch:
        _warn(f"{message} (--allow-mismatch)")
        return
    raise UserError(
        f"{message}; use activations of the model, hook point, layer and tokens the SAE was "
        "trained on" + (f", or {MISMATCH_HINT}" if allow_mismatch is not None else "")
    )


def neuron_identity(source: Mapping[str, Any], n_neurons: int) -> dict[str, Any]:
    """What the neurons of a per-neuron output (top images, scores) are: an SAE (by the
    hash of its weights) or the raw neurons of a store's source, and how many."""
    keys = ("sae", "sae_sha256") if source.get("sae_sha256") else SOURCE_FIELDS
    return {"n_neurons": int(n_neurons), **{k: source.get(k) for k in keys}}


def _neurons(p: Mapping[str, Any]) -> str:
    if p.get("sae_sha256"):
        return f"SAE {p.get('sae')} (weights {p['sae_sha256'][:12]})"
    layer = f" layer {p['layer']}" if p.get("layer") is not None else ""
    return f"raw neurons of {p.get('model')}{layer}"


def check_same_neurons(
    a: Mapping[str, Any], b: Mapping[str, Any], what_a: str, what_b: str
) -> None:
    """Refuse two per-neuron outputs about different neurons (another SAE, another store's
    raw neurons, another count); ``a`` and ``b`` come from :func:`neuron_identity`."""
    na, nb = a.get("n_neurons"), b.get("n_neurons")
    if na is not None and nb is not None and int(na) != int(nb):
        raise UserError(
            f"{what_a} has {na} neurons but {what_b} has {nb}: they are about different "
            "SAEs or stores; use outputs of the same SAE"
        )
    sa, sb = a.get("sae_sha256"), b.get("sae_sha256")
    if (sa != sb) if (sa or sb) else source_differences(a, b):
        raise UserError(
            f"{what_a} and {what_b} are about different neurons ({_neurons(a)} vs "
            f"{_neurons(b)}); use the scores and top images of the same SAE"
        )
