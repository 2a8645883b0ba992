"""`vlmsae export SITE --format neuronpedia`: the explorer's neurons as Neuronpedia feature
dashboards, checked field by field against the format's published schema.

The schema, written out below, is that of the dashboard batches SAEDashboard's
NeuronpediaRunner writes and Neuronpedia imports:
- jbloomAus/SAEDashboard, sae_dashboard/neuronpedia/neuronpedia_dashboard.py
  (commit 234ea3211ce7dbf84d101c4e8bfe844c3903b16a and its later dataclass version):
  ``NeuronpediaDashboardBatch.to_dict`` (model_id, layer, sae_set, sae_id_suffix,
  features), ``NeuronpediaDashboardFeature.to_dict`` (the FEATURE fields, ``vector`` added
  in the later version) and ``NeuronpediaDashboardActivation.to_dict`` (bin_min, bin_max,
  bin_contains, tokens, values, qualifying_token_index; dfa_* optional);
- Neuronpedia's converter utils/neuronpedia-utils/neuronpedia_utils/
  convert-saedashboard-to-neuronpedia-export.py (seen at zazer0/neuronpedia, commit
  4d6d6c6de4a3c94486b75b7aa6121a0c7e0c9860), whose reads (``batch_data["sae_id_suffix"]``,
  ``feature_data[...]``, ``activation_data["bin_contains" | "bin_max" | "bin_min" |
  "qualifying_token_index"]``, ``max(values)``) are replayed by ``_convert`` here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from explore_fixtures import build_tiny_site, read_js

N_IMAGES, D, D_SAE = 24, 8, 40

BATCH = {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": (str, type(None)),
         "features": list}  # fmt: skip
FEATURE = {
    "feature_index": int,
    "neuron_alignment_indices": list,
    "neuron_alignment_values": list,
    "neuron_alignment_l1": list,
    "correlated_neurons_indices": list,
    "correlated_neurons_l1": list,
    "correlated_neurons_pearson": list,
    "correlated_features_indices": list,
    "correlated_features_l1": list,
    "correlated_features_pearson": list,
    "neg_str": list,
    "neg_values": list,
    "pos_str": list,
    "pos_values": list,
    "frac_nonzero": float,
    "freq_hist_data_bar_values": list,
    "freq_hist_data_bar_heights": list,
    "logits_hist_data_bar_heights": list,
    "logits_hist_data_bar_values": list,
    "n_prompts_total": int,
    "n_tokens_in_prompt": int,
    "dataset": str,
    "decoder_weights_dist": list,
    "activations": list,
    "vector": list,
}
ACTIVATION = {"bin_min": float, "bin_max": float, "bin_contains": float, "tokens": list,
              "values": list, "qualifying_token_index": int}  # fmt: skip
OPTIONAL_ACTIVATION = {"dfa_values", "dfa_maxValue", "dfa_targetIndex"}


def _check(obj: dict, schema: dict, where: str, optional: set = frozenset()) -> None:
    assert set(schema) <= set(obj) <= set(schema) | optional, (where, set(obj) ^ set(schema))
    for key, kind in schema.items():
        ok = isinstance(obj[key], kind) and not (kind is int and isinstance(obj[key], bool))
        ok = ok or (kind is float and isinstance(obj[key], int))  # JSON writes 0.0 as 0.0
        assert ok, (where, key, type(obj[key]))


def _convert(batch: dict) -> list[dict]:
    """The converter's reads of one batch: a row per activation (what it uploads)."""
    rows = []
    suffix = batch["sae_id_suffix"]
    source_id = f"{batch['layer']}-{batch['sae_set']}" + (f"__{suffix}" if suffix else "")
    for f in batch["features"]:
        for a in f["activations"]:
            max_value = max(a["values"])
            rows.append({"layer": source_id, "index": f["feature_index"], "maxValue": max_value,
                         "maxValueTokenIndex": a["values"].index(max_value),
                         "binMin": a["bin_min"], "binMax": a["bin_max"],
                         "binContains": a["bin_contains"],
                         "qualifyingTokenIndex": a["qualifying_token_index"]})  # fmt: skip
    return rows


def _vlmsae(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "vlmsae", *args], env=env, text=True,
                          capture_output=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = build_tiny_site(tmp_path_factory.mktemp("np"), N_IMAGES, D, D_SAE)
    out = root / "neuronpedia"
    result = _vlmsae("export", str(root / "site"), "--format", "neuronpedia", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return root, out, result.stdout


def test_every_batch_follows_the_dashboard_schema(exported):
    root, out, stdout = exported
    files = sorted(out.glob("batch-*.json"))
    assert [f.name for f in files] == ["batch-0.json"]  # 40 neurons, 128 per batch
    assert f"{D_SAE} neurons of {root / 'site'} as Neuronpedia dashboards" in stdout
    seen = []
    for path in files:
        batch = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))  # no NaN
        _check(batch, BATCH, path.name)
        for feature in batch["features"]:
            _check(feature, FEATURE, f"feature {feature['feature_index']}")
            for a in feature["activations"]:
                _check(a, ACTIVATION, "activation", OPTIONAL_ACTIVATION)
                assert len(a["tokens"]) == len(a["values"]) == 1
            seen.append(feature["feature_index"])
        assert _convert(batch)  # the converter's reads all succeed
    assert seen == list(range(D_SAE))


def test_the_dashboards_hold_the_sites_neurons(exported):
    root, out, _ = exported
    index = read_js(root / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")
    shard = read_js(root / "site" / "data" / "neurons" / "00000.js", "vlmsaeShard(0, ")
    batch = json.loads((out / "batch-0.json").read_text())
    assert batch["layer"] == 0 and batch["model_id"] == "tiny"
    for feature, rec in zip(batch["features"], shard, strict=False):
        k = rec["id"]
        assert feature["feature_index"] == k
        assert feature["frac_nonzero"] == pytest.approx(index["columns"]["freq"][k])
        assert feature["freq_hist_data_bar_heights"] == rec["hist"]
        assert sum(rec["hist"]) == index["columns"]["n_active"][k]
        values = [a["values"][0] for a in feature["activations"]]
        assert values == pytest.approx([v for _, v in rec["top"]])
        for a, (img, _) in zip(feature["activations"], rec["top"], strict=True):
            path = a["tokens"][0]
            assert os.path.isfile(path)  # the image (its copied thumbnail) on disk
            assert path.endswith(index["images"][img].split("/")[-1])
        if values:
            assert max(values) == pytest.approx(index["columns"]["max_act"][k], rel=1e-3)
        assert feature["correlated_features_indices"] == [j for j, _ in rec["near_jaccard"]]
        assert np.all(np.diff(feature["freq_hist_data_bar_values"]) > 0) or not values


def test_an_unknown_format_names_neuronpedia(exported, tmp_path):
    root, _, _ = exported
    result = _vlmsae("export", str(root / "site"), "--format", "nope", "--out", str(tmp_path))
    assert result.returncode == 2 and "neuronpedia" in result.stderr
    missing = _vlmsae("export", str(tmp_path / "none"), "--format", "neuronpedia", "--out",
                      str(tmp_path / "o"))  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'none'} is not an explorer site (no data/index.js): --format "
        "neuronpedia exports a site built by `vlmsae explore --out SITE`"
    ]
    assert not (tmp_path / "o").exists()
