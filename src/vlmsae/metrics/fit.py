"""Checks that the artifacts a metrics command combines fit, run before it computes.

``score`` pairs activations (or an SAE's codes of them) with embeddings of the same
images; ``top-images`` applies an SAE to a store; ``grid`` and ``hierarchy`` look up the
images of top-image indices in a store and (``grid --scores``) titles them with scores
of the same neurons. Every output records what it was made from (``images`` and
``neurons`` blocks of its ``summary.json``) so that the next command can check it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.data.provenance import (
    DATA_FIELDS,
    IMAGE_FIELDS,
    SOURCE_FIELDS,
    check_same_images,
    check_same_neurons,
    check_same_source,
    neuron_identity,
    store_provenance,
)
from vlmsae.sae.checkpoint import sae_provenance

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore

SUMMARY = "summary.json"
log = logging.getLogger(__name__)


def images_block(prov: dict[str, Any]) -> dict[str, Any]:
    """The image provenance an output records: dataset, split, fingerprint, store."""
    return {k: prov.get(k) for k in ("store", *DATA_FIELDS, *IMAGE_FIELDS)}


def n_images_of(store: ActivationStore, image_R: np.ndarray | None) -> int:
    """Images (rows after aggregation per image) of a store."""
    return len(store) if image_R is None else len(np.unique(image_R))


def check_score_inputs(
    acts_store: ActivationStore,
    emb_store: ActivationStore,
    image_R: np.ndarray | None,
    *,
    sae_dir: Path | None = None,
    raw_store: ActivationStore | None = None,
    allow_mismatch: bool = False,
) -> dict[str, Any]:
    """Refuse activations and embeddings of other images (or counts), and an SAE of
    another source; returns the ``images`` and ``neurons`` provenance of the scores
    (``neurons`` without ``n_neurons``, known once scored)."""
    acts, emb = store_provenance(acts_store), store_provenance(emb_store)
    what_acts, what_emb = f"--activations {acts_store.dir}", f"--embeddings {emb_store.dir}"
    check_same_images(acts, emb, what_acts, what_emb, allow_mismatch=allow_mismatch)
    n = n_images_of(acts_store, image_R)
    if n != len(emb_store):
        raise UserError(
            f"{what_acts} has {n} images but {what_emb} has {len(emb_store)} rows; the "
            "embeddings need one row per image of the activations, in the same order "
            "(embed the same --data and --split)"
        )
    neurons = acts
    if sae_dir is not None:
        neurons = sae_source(sae_dir)
        check_same_source(neurons, acts, f"--sae {sae_dir}", what_acts,
                          allow_mismatch=allow_mismatch)  # fmt: skip
    if raw_store is not None:
        raw = store_provenance(raw_store)
        what_raw = f"--raw {raw_store.dir}"
        check_same_images(raw, acts, what_raw, what_acts, allow_mismatch=allow_mismatch)
        if n_images_of(raw_store, _image_index(raw_store)) != n:
            raise UserError(f"{what_raw} and {what_acts} hold different numbers of images")
    return {"images": images_block(acts), "neurons": neurons}


def _image_index(store: ActivationStore) -> np.ndarray | None:
    from vlmsae.metrics._source import image_index_of

    return image_index_of(store)


def check_top_inputs(
    store: ActivationStore, sae_dir: Path | None, *, allow_mismatch: bool = False
) -> dict[str, Any]:
    """Refuse an SAE of another source than ``store``; the provenance the top images
    record (``neurons`` without ``n_neurons``)."""
    prov = store_provenance(store)
    neurons = prov
    if sae_dir is not None:
        neurons = sae_source(sae_dir)
        check_same_source(neurons, prov, f"--sae {sae_dir}", f"store {store.dir}",
                          allow_mismatch=allow_mismatch)  # fmt: skip
    return {"images": images_block(prov), "neurons": neurons}


def sae_source(sae: str | Path) -> dict[str, Any]:
    """Shape, source and weight hash of an SAE: a vlmsae checkpoint folder
    (:func:`~vlmsae.sae.checkpoint.sae_provenance`) or anything else ``SAE.load`` reads (a
    hub id, a SAELens or dictionary_learning folder: the source its config records, the
    hash of its converted weights)."""
    import hashlib

    from vlmsae.formats.hub import detect_format

    local = Path(str(sae))
    if local.is_dir() and detect_format(local) == "vlmsae":
        return sae_provenance(local)
    from vlmsae.sae import SAE

    model = SAE.load(sae)
    local_dir = getattr(model, "local_dir", None)
    if local_dir is not None and detect_format(Path(local_dir)) == "vlmsae":
        return {**sae_provenance(local_dir), "sae": str(sae)}
    cfg = model.cfg
    prov = {k: getattr(cfg, k) for k in SOURCE_FIELDS if getattr(cfg, k, None) is not None}
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode("utf-8"))
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    prov.update(sae=str(sae), d_in=cfg.d_in, d_sae=cfg.d_sae, sae_sha256=h.hexdigest())
    return prov


class ScoresRead(NamedTuple):
    """One ``vlmsae score`` output, read with its files checked to be one output's."""

    dir: Path
    manifest: dict[str, Any] | None
    """Its ``output.json`` (None: written by an older vlmsae)."""
    summary: dict[str, Any]
    ms: np.ndarray
    """The scores read (``scores.npy``, or the ``.npy`` file named)."""


def read_scores_output(path: Path) -> ScoresRead:
    """The scores at ``path``: a ``vlmsae score`` folder (its ``scores.npy``) or a ``.npy``
    file in one; every file read is checked against the folder's manifest."""
    from vlmsae.core.outputs import checked_manifest, read_output_npy

    path = Path(path)
    folder, name = (path, "scores.npy") if path.is_dir() else (path.parent, path.name)
    what = f"--scores {path}"
    manifest = checked_manifest(folder, what)
    if manifest is not None and manifest.get("command") != "score":
        raise UserError(f"{what} is not an output of `vlmsae score` (it holds the output of "
                        f"`vlmsae {manifest.get('command')}`)")  # fmt: skip
    if manifest is None and not (folder / name).is_file():
        raise UserError(f"{folder / name} not found: --scores must be a `vlmsae score` output")
    ms = read_output_npy(folder, name, manifest, what)
    return ScoresRead(folder, manifest, read_summary(folder, manifest) or {}, ms)


def with_neuron_count(record: dict[str, Any], n_neurons: int) -> dict[str, Any]:
    """``record`` (from ``check_*_inputs``) with its ``neurons`` reduced to their
    identity (:func:`~vlmsae.data.provenance.neuron_identity`) and count."""
    return {**record, "neurons": neuron_identity(record["neurons"], n_neurons)}


_NO_MANIFEST: dict[str, Any] = {}


def read_summary(
    out_dir: Path, manifest: dict[str, Any] | None = _NO_MANIFEST
) -> dict[str, Any] | None:
    """The ``summary.json`` of an output directory, or None when it has none; checked
    against the output's manifest (``manifest``: one read already, None for an older output
    without one; by default read now, see :mod:`vlmsae.core.outputs`)."""
    from vlmsae.core.outputs import checked_manifest, read_output_json

    out_dir = Path(out_dir)
    if manifest is _NO_MANIFEST:
        manifest = checked_manifest(out_dir)
    if manifest is None and not (out_dir / SUMMARY).is_file():
        return None
    return read_output_json(out_dir, SUMMARY, manifest)


def check_images_for_top(
    top_dir: Path, indices: np.ndarray, images_dir: Path, summary: dict[str, Any]
) -> list[str]:
    """The image paths of ``images_dir`` (a store) after checking that they are the
    images the top-image ``indices`` of ``top_dir`` (its ``summary``) point into."""
    from vlmsae.data.store import ActivationStore

    store = ActivationStore(images_dir)
    what_top, what_images = f"top images {top_dir}", f"--images {images_dir}"
    check_same_images(summary.get("images") or {}, store_provenance(store), what_top, what_images)
    paths = store.images
    valid = indices[indices >= 0]
    if valid.size and int(valid.max()) >= len(paths):
        raise UserError(
            f"{what_top} point at image {int(valid.max())} but {what_images} lists "
            f"{len(paths)} images; pass the store the top images were computed on"
        )
    return paths


def check_scores_for_top(
    top_dir: Path, n_neurons: int, scores_path: Path, top_summary: dict[str, Any]
) -> np.ndarray:
    """The scores in ``scores_path`` (``scores.npy`` or its ``vlmsae score`` folder) after
    checking they are one output's and about the neurons of the top images in ``top_dir``
    (its ``top_summary``: same count; same SAE where both record it)."""
    scores = read_scores_output(scores_path)
    ms = scores.ms
    what_top, what_scores = f"top images {top_dir}", f"--scores {scores_path}"
    if ms.ndim != 1 or len(ms) != n_neurons:
        raise UserError(
            f"{what_scores} holds {len(ms) if ms.ndim == 1 else ms.shape} scores but "
            f"{what_top} has {n_neurons} neurons; use the scores of the same SAE"
        )
    top = top_summary.get("neurons")
    scored = scores.summary.get("neurons")
    if top and scored:
        check_same_neurons(top, scored, what_top, what_scores)
    else:
        log.warning(
            "%s or %s records no neuron provenance (written by an older vlmsae): cannot "
            "check that they are about the same SAE", what_top, what_scores,
        )  # fmt: skip
    return ms


def check_sae_for_top(top_dir: Path, sae_dir: Path, top_summary: dict[str, Any]) -> None:
    """Refuse an SAE other than the one whose top images ``top_dir`` (its ``top_summary``)
    holds."""
    top = top_summary.get("neurons")
    if top:
        sae = sae_source(sae_dir)
        check_same_neurons(top, neuron_identity(sae, int(sae["d_sae"])), f"top images {top_dir}",
                           f"--sae {sae_dir}")  # fmt: skip


def check_neuron_ids(ids: list[int] | None, n_neurons: int, top_dir: Path) -> None:
    """Refuse neuron ids that the top images do not have."""
    bad = [i for i in ids or [] if not 0 <= i < n_neurons]
    if bad:
        raise UserError(
            f"neuron {bad[0]} does not exist: {top_dir} has neurons 0 to {n_neurons - 1}"
        )


def read_score_summaries(runs: list[Path]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each ``vlmsae score`` output; refuses other folders."""
    records = []
    for run in runs:
        summary = read_summary(run)
        if not isinstance(summary, dict) or "ms" not in summary:
            raise UserError(
                f"{run} is not an output directory of `vlmsae score` (no {SUMMARY} with MS "
                "scores); pass the --out folders of `vlmsae score`"
            )
        records.append(summary)
    return records
