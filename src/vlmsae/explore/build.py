"""``build_site``: the neuron browser of an SAE from what the pipeline wrote.

Inputs beyond the SAE and its activation store are optional; what is missing is computed
(top images, histograms, neighbours, heatmaps, MS from an embedding store) or left out,
never made up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.explore.neurons import RawNeurons, compute_neuron_data
from vlmsae.explore.site import (
    SITE_ENTRIES,
    ExploreConfig,
    SiteResult,
    read_labels,
    read_scores,
    write_site,
)
from vlmsae.explore.truth import ToyTruth, dominant_concepts, toy_truth

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders import Encoder
    from vlmsae.sae import SAE

log = logging.getLogger(__name__)
EmbeddingsArg = str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None
"""One embedding store, several (each may be ``NAME=PATH``), or ``{name: store}``."""


def check_fits(sae: SAE, store: ActivationStore) -> None:
    """Refuse a store the SAE was not trained for: another width, model, hook point or
    layer (where both record it; the token selection may differ)."""
    if store.is_sparse and store.d != sae.cfg.d_sae:
        raise UserError(
            f"the code store {store.dir} holds {store.d} latents but the SAE has "
            f"{sae.cfg.d_sae}; give the codes of this SAE (`vlmsae cache --sae SAE`)"
        )
    if not store.is_sparse and store.d != sae.cfg.d_in:
        raise UserError(
            f"the activation store {store.dir} has width {store.d} but the SAE reads "
            f"{sae.cfg.d_in}; give the store cached at the SAE's hook point"
        )
    for field in ("model", "hookpoint", "layer"):
        mine, theirs = getattr(sae.cfg, field, None), store.manifest.get(field)
        if mine is not None and theirs is not None and str(mine) != str(theirs):
            raise UserError(
                f"the SAE was trained on {field} {mine} but the activation store {store.dir} "
                f"holds {field} {theirs}; give a store cached from the SAE's model and hook point"
            )


def _load_encoder(model: str | Path | None, store: ActivationStore) -> Encoder | None:
    """The encoder for heatmaps: ``model`` if given, else none (recomputing needs the
    weights, which may be remote; the user asks for it with ``--model``)."""
    if model is None:
        return None
    from vlmsae.encoders import Encoder

    recorded = store.manifest.get("model")
    same = str(model) == str(recorded) or Path(model).resolve() == Path(str(recorded)).resolve()
    if recorded and not same:
        raise UserError(
            f"--model {model} is not the model the store was cached from ({recorded}); "
            "give that model so that heatmaps show this SAE's neurons"
        )
    return Encoder.from_pretrained(model)


class MSColumn(NamedTuple):
    """One MS column of the site and the embedder it was measured with."""

    column: str
    """Key in the index's columns (``ms`` for the first, ``ms_<name>`` for the others)."""
    embedder: str
    """Short name of the embedder (every MS shown names it: MS depends on it)."""
    source: str
    """The embedding store or ``vlmsae score`` directory it came from."""


def embedding_specs(embeddings: EmbeddingsArg) -> list[tuple[str | None, Path]]:
    """``(name or None, store)`` of each embedding store: a path, a list of paths (each
    may be ``NAME=PATH``) or a ``{name: path}`` mapping."""
    if embeddings is None:
        return []
    if isinstance(embeddings, Mapping):
        return [(str(k), Path(v)) for k, v in embeddings.items()]
    items = [embeddings] if isinstance(embeddings, (str, Path)) else list(embeddings)
    out: list[tuple[str | None, Path]] = []
    for item in items:
        text = str(item)
        name, sep, path = text.partition("=")
        if sep and name and not Path(text).exists():
            out.append((name.strip(), Path(path)))
        else:
            out.append((None, Path(item)))
    return out


def _column_key(name: str, taken: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "emb"
    key, i = f"ms_{slug}", 2
    while key in taken:
        key, i = f"ms_{slug}_{i}", i + 1
    return key


def _check_embedding(
    emb: ActivationStore, path: Path, codes_NS: Any, store: ActivationStore
) -> None:
    if len(emb) != codes_NS.shape[0]:
        raise UserError(
            f"the embedding store {path} has {len(emb)} images but the activation "
            f"store {store.dir} has {codes_NS.shape[0]}; embed the same images"
        )
    if emb.images and store.images and emb.images != store.images:
        raise UserError(
            f"the embedding store {path} lists other images than {store.dir}; "
            "embed the same image folder and split"
        )


def ms_columns(
    codes_NS: Any, specs: list[tuple[str | None, Path]], store: ActivationStore,
    columns: dict[str, Any], info: list[MSColumn],
) -> None:  # fmt: skip
    """Add one MS column per embedding store to ``columns`` (the first is ``ms`` unless
    ``info`` holds one already) and its :class:`MSColumn` to ``info``."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics.ms import embedder_name, monosemanticity

    for name, path in specs:
        emb = ActivationStore(path)
        _check_embedding(emb, path, codes_NS, store)
        name = name or embedder_name(emb.manifest, path.name)
        res = monosemanticity(codes_NS, emb)
        key = "ms" if not info else _column_key(name, set(columns))
        columns[key] = res.ms
        columns.setdefault("ms_n_active", res.n_active.astype(float))
        info.append(MSColumn(key, name, str(path)))
        log.info("MS under %s (%s): column %s", name, path, key)


def scores_embedder(scores: Path) -> str:
    """The embedder a ``vlmsae score`` directory was measured with (its summary's
    ``embedder``, else the name of its embedding store's model)."""
    import json

    from vlmsae.metrics.ms import embedder_name

    summary_path = Path(scores) / "summary.json"
    if not summary_path.is_file():
        return f"the embedding of {Path(scores).name}"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("embedder"):
        return str(summary["embedder"])
    emb = summary.get("embeddings")
    manifest_path = Path(str(emb)) / "manifest.json" if emb else None
    if manifest_path is not None and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return embedder_name(manifest, Path(str(emb)).name)
    return f"the embedding of {Path(scores).name}"


def taxonomy_of(store: ActivationStore, truth: ToyTruth | None) -> np.ndarray | None:
    """Taxonomy ids per image (``encode_taxonomy``): the toy world's levels (family → shape
    → colour; group → subgroup → emoji), or the levels of iNaturalist class folders; None
    for flat labels."""
    from vlmsae.metrics.hierarchy import encode_taxonomy, label_paths_from_images

    if truth is not None:
        levels = [truth.labels[a].tolist() for a in truth.world.taxonomy_levels]
        return encode_taxonomy(list(zip(*levels, strict=True)))
    names = [Path(p).parent.name for p in store.images]
    if not names or not all(len(n.split("_")) >= 8 and n[:1].isdigit() for n in names):
        return None
    return encode_taxonomy(label_paths_from_images(store.images, inat=True))


def build_site(
    sae_dir: str | Path | None,
    activations: str | Path,
    out_dir: str | Path,
    *,
    scores: str | Path | None = None,
    embeddings: EmbeddingsArg = None,
    labels: str | Path | None = None,
    model: str | Path | None = None,
    cfg: ExploreConfig | None = None,
    llava: str | Path | None = None,
    probe: Any = None,
    overwrite: bool = False,
) -> SiteResult:
    """Build the browser of ``sae_dir`` over ``activations`` into ``out_dir``.

    Args:
        sae_dir: the SAE checkpoint, or None for the store's raw neurons (its dimensions).
        scores: a ``vlmsae score`` output directory of this SAE (MS with its n_active).
        embeddings: embedding stores to compute MS with, one column each, named by its
            embedder (``NAME=PATH`` or a ``{name: path}`` mapping names it; else the
            store's model): a path, a list, or a mapping.
        labels: ``labels.csv`` of ``vlmsae label``.
        model: the vision model the store was cached from: heatmaps for stores without
            patch tokens are recomputed with it for the top images only.
        llava: a LLaVA whose vision tower the SAE was trained on: the steering probe
            (:mod:`vlmsae.explore.probe`) of the neurons ``probe`` (a ``ProbeConfig``) picks.
        overwrite: write into ``out_dir`` even where it holds something other than a site
            (:func:`vlmsae.core.outputs.check_out_free`).

    The site is written as one output (:mod:`vlmsae.core.outputs`).
    """
    from vlmsae.core.outputs import check_out_free, writing_output
    from vlmsae.data.provenance import neuron_identity, store_provenance
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics.fit import sae_source
    from vlmsae.metrics.score_files import check_rows
    from vlmsae.sae import SAE

    cfg = cfg or ExploreConfig()
    inputs = (sae_dir, activations, scores, embeddings, labels)
    check_out_free(Path(out_dir), "explore", owns=SITE_ENTRIES, inputs=inputs, overwrite=overwrite)
    store = ActivationStore(activations)
    check_rows(store, "--activations")
    if sae_dir is None:
        if store.is_sparse:
            raise UserError(f"{activations} is a code store; raw neurons need an activation store")
        sae = RawNeurons(store.d)
        neurons = neuron_identity(store_provenance(store), store.d)
    else:
        sae = SAE.load(sae_dir)
        sae.eval()
        check_fits(sae, store)
        neurons = neuron_identity(sae_source(sae_dir), sae.cfg.d_sae)
    if llava is not None and sae_dir is None:
        raise UserError("--llava steers SAE neurons: give --sae SAE (not --raw)")
    llava_model = None
    if llava is not None:
        from vlmsae.explore.probe import NEEDS_MS, ProbeConfig, load_for_probe, probe_neurons

        probe = probe or ProbeConfig()
        if probe.neurons is None and scores is None and not embedding_specs(embeddings):
            raise UserError(NEEDS_MS)
        if probe.neurons is not None:
            probe_neurons({}, sae.cfg.d_sae, probe)  # ids in range
        llava_model, steer_layer = load_for_probe(llava, sae)  # fail early, before the work
    given: dict[str, Any] = {}  # what --scores and --labels give, checked before the work
    if scores is not None:
        given.update(read_scores(Path(scores), sae.cfg.d_sae, neurons))
    if labels is not None:
        given["label"], given["margin"] = read_labels(Path(labels), sae.cfg.d_sae, neurons)
    encoder = _load_encoder(model, store) if cfg.heatmaps else None
    data, codes_NS = compute_neuron_data(
        sae, store, top_k=cfg.top_k, n_bins=cfg.n_bins, n_neighbours=cfg.n_neighbours,
        encoder=encoder, heatmaps=cfg.heatmaps,
    )  # fmt: skip
    n_s = sae.cfg.d_sae
    columns: dict[str, Any] = {
        "group": data.group,
        "n_active": data.n_active,
        "freq": data.n_active / max(data.n_images, 1),
        "max_act": data.max_activation,
    }
    columns.update(given)  # --scores and --labels, checked against the SAE before the work
    ms_info: list[MSColumn] = []
    if scores is not None:
        ms_info.append(MSColumn("ms", scores_embedder(Path(scores)), str(scores)))
    ms_columns(codes_NS, embedding_specs(embeddings), store, columns, ms_info)
    truth = toy_truth(store)
    valid_top = np.where(data.top_values > 0, data.top_indices, -1)
    taxonomy = taxonomy_of(store, truth)
    if taxonomy is not None:
        from vlmsae.metrics.hierarchy import hierarchy

        columns["depth"] = hierarchy(taxonomy, valid_top).mean_depth
    if truth is not None:
        concepts = dominant_concepts(valid_top, truth)
        columns["concept"], columns["purity"] = concepts.name, concepts.purity
    steering = None
    if llava_model is not None:
        from vlmsae.explore.probe import probe_neurons, steering_probe

        chosen = probe_neurons(columns, n_s, probe, min_active=cfg.min_active)
        top = {k: float(data.max_activation[k]) for k in chosen}
        base, answers = steering_probe(llava_model, sae, steer_layer, top, probe)
        steering = {
            "model": str(llava), "layer": steer_layer, "prompt": probe.prompt,
            "mode": probe.mode, "factors": list(probe.factors), "base": base,
            "neurons": chosen, "answers": answers,
        }  # fmt: skip
    meta = {
        "title": cfg.title,
        "sae": str(sae_dir) if sae_dir is not None else None,
        "activations": str(activations),
        "model": store.manifest.get("model"),
        "hookpoint": store.manifest.get("hookpoint"),
        "layer": store.manifest.get("layer"),
        "arch": sae.cfg.arch,
        "d_sae": n_s,
        "group_sizes": list(sae.cfg.group_sizes),
        "scores": str(scores) if scores is not None else None,
        "ms": [c._asdict() for c in ms_info],
        "min_active": cfg.min_active,
    }
    if steering is not None:
        meta["steering"] = {k: v for k, v in steering.items() if k != "answers"}
    with writing_output(out_dir, "explore", owns=SITE_ENTRIES, inputs=inputs,
                        overwrite=overwrite, meta={"artifact": "site"}) as unit:  # fmt: skip
        unit.dirty = True  # write_site replaces files itself
        result = write_site(
            Path(out_dir), data, columns, store.images, meta, cfg,
            steering=steering["answers"] if steering else None,
        )  # fmt: skip
        unit.add(*result.files)
    log.info("explorer of %d neurons → %s", n_s, result.index_html)
    return result
