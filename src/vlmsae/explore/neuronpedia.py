"""Export the explorer's neurons as Neuronpedia feature dashboards.

Neuronpedia imports SAE features as the *dashboard batches* SAEDashboard's
``NeuronpediaRunner`` writes (``batch-0.json``, ``batch-1.json``, ...; converted for upload
by Neuronpedia's ``convert-saedashboard-to-neuronpedia-export.py``). Each batch is
``{"model_id", "layer", "sae_set", "sae_id_suffix", "features": [...]}`` and each feature
holds exactly the fields of SAEDashboard's ``NeuronpediaDashboardFeature.to_dict`` (module
``sae_dashboard/neuronpedia/neuronpedia_dashboard.py``); tests/test_neuronpedia.py writes the
schema out field by field with its source.

A vision SAE's neuron maps onto a text feature like this: one *activation* record per top
image, whose single "token" is the image's path and whose value is the neuron's activation
on it (``n_tokens_in_prompt`` = 1, ``n_prompts_total`` = images explored); the activation
histogram, ``frac_nonzero`` (share of images where it fires) and the Jaccard neighbours
(``correlated_features_*``) come from the site. Logit effects, neuron alignment and
decoder vectors have no counterpart in the site and are left empty, as the format allows.
MS and labels are not fields of this format (Neuronpedia computes its own explanations).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

from vlmsae.core.errors import UserError

BATCH_SIZE = 128
"""Features per batch file (SAEDashboard's default ``n_features_at_a_time``)."""


class NeuronpediaExport(NamedTuple):
    """What :func:`export_neuronpedia` wrote."""

    n_features: int
    batches: list[Path]
    sae_set: str


def _image_path(site_dir: Path, index: dict[str, Any], image: int) -> str:
    """Absolute path of image ``image`` of the site (its thumbnail if copied)."""
    url = index["images"][image]
    if url is None:
        return f"<unreadable image {image}>"
    return str((site_dir / unquote(url)).resolve())


def feature_record(site_dir: Path, index: dict[str, Any], rec: dict[str, Any]) -> dict:
    """One ``NeuronpediaDashboardFeature.to_dict`` of the neuron page record ``rec``."""
    cols, meta = index["columns"], index["meta"]
    k = int(rec["id"])
    max_act = float(cols["max_act"][k] or 0.0)
    n_bins = max(len(rec["hist"]), 1)
    top = [(int(i), float(v)) for i, v in rec["top"]]
    low = min((v for _, v in top), default=0.0)
    activations = [
        {
            "bin_min": low,
            "bin_max": max_act,
            "bin_contains": len(top) / max(int(meta["n_images"]), 1),
            "tokens": [_image_path(site_dir, index, i)],
            "values": [v],
            "qualifying_token_index": 0,
        }
        for i, v in top
    ]
    near = [(int(j), float(v)) for j, v in rec.get("near_jaccard", [])]
    return {
        "feature_index": k,
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [j for j, _ in near],
        "correlated_features_l1": [v for _, v in near],
        "correlated_features_pearson": [],
        "neg_str": [],
        "neg_values": [],
        "pos_str": [],
        "pos_values": [],
        "frac_nonzero": float(cols["freq"][k] or 0.0),
        "freq_hist_data_bar_values": [(b + 0.5) * max_act / n_bins for b in range(n_bins)],
        "freq_hist_data_bar_heights": [float(c) for c in rec["hist"]],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "n_prompts_total": int(meta["n_images"]),
        "n_tokens_in_prompt": 1,
        "dataset": str(meta.get("activations") or ""),
        "decoder_weights_dist": [],
        "activations": activations,
        "vector": [],
    }


def default_sae_set(meta: dict[str, Any]) -> str:
    """A Neuronpedia source-set id from the site: ``<hook>-<arch>-<width>`` (lower case,
    letters, digits and dashes)."""
    text = f"{meta.get('hookpoint') or 'vision'}-{meta.get('arch') or 'sae'}-{meta['n_neurons']}"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def export_neuronpedia(
    site_dir: str | Path,
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    sae_set: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> NeuronpediaExport:
    """Write the neurons of the explorer site ``site_dir`` (``vlmsae explore --out``) as
    Neuronpedia dashboard batches ``out_dir/batch-<i>.json``.

    Args:
        model_id: Neuronpedia's model id (default: the short name of the site's model).
        sae_set: the source-set id (default :func:`default_sae_set`).
        batch_size: features per batch file.
    """
    from vlmsae.core.io import atomic_write_text
    from vlmsae.core.progress import model_label, progress
    from vlmsae.explore.cards import read_index, read_neuron

    site_dir, out_dir = Path(site_dir), Path(out_dir)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    index = read_index(site_dir)
    meta = index["meta"]
    model_id = model_id or model_label(str(meta.get("model") or "vision-model"))
    sae_set = sae_set or default_sae_set(meta)
    n = int(meta["n_neurons"])
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = []
    for b, lo in enumerate(progress(range(0, n, batch_size), desc="neuronpedia batches")):
        features = [
            feature_record(site_dir, index, read_neuron(site_dir, index, k))
            for k in range(lo, min(n, lo + batch_size))
        ]
        batch = {
            "model_id": model_id,
            "layer": int(meta["layer"]) if meta.get("layer") is not None else 0,
            "sae_set": sae_set,
            "sae_id_suffix": None,
            "features": features,
        }
        path = out_dir / f"batch-{b}.json"
        atomic_write_text(path, json.dumps(batch, allow_nan=False) + "\n")
        batches.append(path)
    return NeuronpediaExport(n, batches, sae_set)


def export_command(source: Path, out: Path) -> str:
    """``vlmsae export SITE --format neuronpedia --out DIR``: the line it prints."""
    res = export_neuronpedia(source, out)
    return (
        f"{res.n_features} neurons of {source} as Neuronpedia dashboards (source set "
        f"{res.sae_set}) in {len(res.batches)} batch files → {out}"
    )
