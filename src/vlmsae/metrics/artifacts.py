"""The files of the metric commands after ``vlmsae score``: ``top-images``, ``uniqueness``,
``hierarchy``, ``agreement``, ``grid`` and ``ms-table``, one function each.

Each checks that its inputs fit (one ``Error:`` line when they do not), computes, writes its
files and returns what the command prints (the JSON it wrote, or a named result).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.core.io import atomic_write_text, write_json
from vlmsae.core.outputs import checked_manifest, clear_output, read_output_npy, writing_output
from vlmsae.metrics.fit import SUMMARY, read_summary
from vlmsae.metrics.score_files import check_rows
from vlmsae.metrics.top_images import TopImages

TOP_FILES = ("top_indices.npy", "top_values.npy", SUMMARY)
"""What ``vlmsae top-images`` writes."""
TOP_COMPANIONS = ("uniqueness.json", "hierarchy.json")
"""What ``uniqueness`` and ``hierarchy`` write into a top-images folder by default (stale,
and removed, when the top images are written again)."""


class TopImagesRun(NamedTuple):
    """What :func:`write_top_images` wrote."""

    n_neurons: int
    """Neurons ranked."""
    n_dead: int
    """Neurons whose k-th top value is 0 (the paper's rule at k)."""


class GridRun(NamedTuple):
    """What :func:`write_grid` drew."""

    n_neurons: int
    """Neurons drawn (one row each)."""
    drawn: int
    """Images drawn."""
    unreadable: int
    """Images that could not be read (blank cells)."""


class TopRead(NamedTuple):
    """The files of one top-images output, checked to be one output's."""

    top: TopImages
    summary: dict[str, Any]


def read_top(top_dir: Path) -> TopRead:
    """The top images written by :func:`write_top_images` in ``top_dir`` and its summary,
    each file checked against the output's manifest (:mod:`vlmsae.core.outputs`)."""
    what = f"top images {top_dir}"
    manifest = checked_manifest(top_dir, what)
    if manifest is not None and manifest.get("command") != "top-images":
        raise UserError(f"{top_dir} is not an output of `vlmsae top-images` (it holds the "
                        f"output of `vlmsae {manifest.get('command')}`)")  # fmt: skip
    indices = read_output_npy(top_dir, "top_indices.npy", manifest, what)
    values = read_output_npy(top_dir, "top_values.npy", manifest, what)
    summary = read_summary(top_dir, manifest) or {}
    if indices.shape != values.shape:
        raise UserError(f"{what}: top_indices.npy and top_values.npy differ in shape")
    return TopRead(TopImages(indices, values), summary)


def parse_ids(text: str | None) -> list[int] | None:
    """``"3, 17,42"`` -> ``[3, 17, 42]``; ``None`` for no text."""
    return [int(t) for t in text.replace(" ", "").split(",") if t] if text else None


def write_top_images(
    codes: Path,
    out: Path,
    *,
    sae: Path | None = None,
    k: int = 16,
    aggregate: str = "max",
    chunk_rows: int = 1 << 16,
    allow_mismatch: bool = False,
    overwrite: bool = False,
) -> TopImagesRun:
    """Top-``k`` images of every neuron of the store ``codes`` (or of the SAE's codes of it;
    any SAE ``SAE.load`` reads): ``top_indices.npy``, ``top_values.npy`` and ``summary.json``
    in ``out``, one output (:mod:`vlmsae.core.outputs`; ``overwrite``: into a folder of
    something else)."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics._source import image_index_of, rank_span
    from vlmsae.metrics.fit import check_top_inputs, with_neuron_count
    from vlmsae.metrics.sae_codes import sae_codes_of_rows
    from vlmsae.metrics.top_images import top_images

    store = ActivationStore(codes)
    check_rows(store, "the store")
    provenance = check_top_inputs(store, sae, allow_mismatch=allow_mismatch)
    with writing_output(out, "top-images", owns=TOP_FILES + TOP_COMPANIONS, inputs=(codes, sae),
                        overwrite=overwrite, meta={"artifact": "top_images"}) as unit:  # fmt: skip
        source, image_R = store, image_index_of(store)
        if sae is not None:  # the codes of the rows top_images reads on this rank
            span = rank_span(len(store), image_R)
            source = sae_codes_of_rows(sae, store, chunk_rows, span).codes
        top = top_images(source, k, image_index=image_R, aggregate=aggregate, progress=True)
        unit.save_npy("top_indices.npy", top.indices)
        unit.save_npy("top_values.npy", top.values)
        dead = int((~top.kept(k)).sum())  # the paper's rule at k: k-th value == 0
        if unit.active:
            clear_output(out, TOP_COMPANIONS)  # they describe the old top images
        unit.write_json(
            SUMMARY,
            {"store": str(codes), "sae": str(sae) if sae else None, "k": k,
             "aggregate": aggregate, "n_neurons": len(top.indices), "n_dead_kth_zero": dead,
             "artifact": "top_images", **with_neuron_count(provenance, len(top.indices))},
        )  # fmt: skip
    return TopImagesRun(len(top.indices), dead)


def write_uniqueness(top: Path, json_path: Path | None = None, min_active: int = 16) -> dict:
    """Pairwise Jaccard of the top-image sets in ``top``, among the neurons whose
    ``min_active``-th top activation is non-zero; written to ``json_path`` (default
    ``top/uniqueness.json``) and returned."""
    from vlmsae.metrics.uniqueness import uniqueness

    res = uniqueness(read_top(top).top, min_active=min_active)
    out = {
        "min_active": min_active,
        "n_neurons_kept": int(res.kept.sum()),
        "n_neurons_dropped": res.n_dropped,
        "n_pairs": res.n_pairs,
        "pairs_above": {
            f"{t:.1f}": int(c) for t, c in zip(res.thresholds, res.n_pairs_above, strict=True)
        },
        "mean_max_jaccard": float(res.max_jaccard[res.kept].mean()) if res.kept.any() else None,
    }
    write_json(json_path or top / "uniqueness.json", out)
    return out


def write_hierarchy(
    top: Path,
    *,
    images: Path | None = None,
    labels: Path | None = None,
    group_sizes: list[int] | None = None,
    sae: Path | None = None,
    json_path: Path | None = None,
    min_active: int = 16,
    round_depth: bool = True,
) -> dict[str, Any]:
    """Mean / majority LCA depth of the top-image pairs in ``top`` per neuron, averaged per
    Matryoshka group (``group_sizes``, or the SAE's); the labels come from ``labels`` (a label
    path per image) or the image paths of the store ``images``. Written to ``json_path``
    (default ``top/hierarchy.json``) and returned."""
    from vlmsae.metrics.fit import check_images_for_top, check_sae_for_top
    from vlmsae.metrics.hierarchy import encode_taxonomy, hierarchy, label_paths_from_images

    tops, summary = read_top(top)
    idx = tops.indices
    if labels is not None:
        paths = labels.read_text(encoding="utf-8").splitlines()
        if idx.size and int(idx.max()) >= len(paths):
            raise UserError(f"top images {top} point at image {int(idx.max())} but --labels "
                            f"{labels} has {len(paths)} lines (one per image)")  # fmt: skip
    elif images is not None:
        paths = label_paths_from_images(check_images_for_top(top, idx, images, summary))
    else:
        raise UserError("give --images STORE or --labels FILE")
    if group_sizes is None and sae is not None:
        from vlmsae.sae import SAE

        check_sae_for_top(top, sae, summary)
        group_sizes = list(SAE.load(sae).cfg.group_sizes)
    res = hierarchy(encode_taxonomy(paths), tops, group_sizes, min_active=min_active,
                    round_depth=round_depth)  # fmt: skip
    defined = res.mean_depth[~np.isnan(res.mean_depth)]
    out = {
        "group_sizes": group_sizes,
        "group_mean_depth": res.group_mean_depth.tolist(),
        "group_majority_depth": res.group_majority_depth.tolist(),
        "mean_depth": float(defined.mean()) if defined.size else None,
        "min_active": min_active,
        "n_neurons_kept": int(res.kept.sum()),
        "round_depth": round_depth,
    }
    write_json(json_path or top / "hierarchy.json", out)
    return out


def write_agreement(
    pairs: Path, scores: Sequence[str] = (), json_path: Path | None = None
) -> dict[str, dict[str, Any]]:
    """How often the neuron of higher MS is the one users preferred, per scoring: those in
    the benchmark CSV ``pairs`` and each ``NAME=PATH`` of ``scores`` (``.npy`` or
    ``scores.csv``). Written to ``json_path`` (default ``PAIRS.agreement.json``), returned."""
    from vlmsae.metrics.agreement import agreement, read_pairs

    p = read_pairs(pairs)
    results = {n: agreement(x, y, p.r_user) for n, (x, y) in p.scores.items()}
    for spec in scores:
        name, _, path_text = spec.rpartition("=")
        path = Path(path_text)
        if path.suffix == ".npy" or path.is_dir():  # checked to be one output's
            from vlmsae.metrics.fit import read_scores_output

            ms = read_scores_output(path).ms
        else:
            ms = np.genfromtxt(path, delimiter=",", names=True)["ms"]
        if max(p.k_x.max(), p.k_y.max()) >= len(ms):
            raise UserError(f"{path} has {len(ms)} scores; the pairs name larger neurons")
        results[name or path.stem] = agreement(ms[p.k_x], ms[p.k_y], p.r_user)
    write_json(json_path or pairs.with_suffix(".agreement.json"), results)
    return results


def write_grid(
    top: Path,
    images: Path,
    out: Path,
    *,
    scores: Path | None = None,
    neurons: list[int] | None = None,
    top_n: int = 8,
    group: int | None = None,
    group_sizes: list[int] | None = None,
    n_images: int = 16,
    min_active: int = 16,
) -> GridRun:
    """A PNG grid of each chosen neuron's top images (``neurons``, or the ``top_n`` of highest
    MS among those active on ``min_active`` images), titled with its MS."""
    from vlmsae.metrics.fit import check_images_for_top, check_neuron_ids, check_scores_for_top
    from vlmsae.report.grid import neuron_grid, select_neurons

    tops, summary = read_top(top)
    idx = tops.indices
    paths = check_images_for_top(top, idx, images, summary)
    ms = check_scores_for_top(top, len(idx), scores, summary) if scores else None
    check_neuron_ids(neurons, len(idx), top)
    chosen = select_neurons(
        ms, ids=neurons, top_n=top_n, group=group, group_sizes=group_sizes,
        alive_K=None if neurons else tops.kept(min_active),
    )  # fmt: skip
    label = f"MS ({_embedder_of(Path(scores))})" if scores else "MS"
    counts = neuron_grid(out, chosen, idx, paths, ms=ms, ms_label=label, n_images=n_images)
    return GridRun(len(chosen), counts["drawn"], counts["unreadable"])


def write_ms_table(runs: list[Path], out: Path | None = None) -> str:
    """The paper's Table (max MS per layer × expansion × architecture) and the sparsity /
    reconstruction trade-off over the ``vlmsae score`` folders ``runs`` (written to ``out``)."""
    from vlmsae.metrics.fit import read_score_summaries
    from vlmsae.metrics.tables import ms_tables, tradeoff_table

    records = read_score_summaries(runs)
    text = "## Max MS\n\n" + ms_tables(records) + "\n## Trade-off\n\n" + tradeoff_table(records)
    if out:
        atomic_write_text(out, text)
    return text


def _embedder_of(scores: Path) -> str:
    """The embedder of ``vlmsae score`` output (``scores.npy`` or its folder), from its
    summary.json; the folder's name where the summary does not say."""
    import json

    folder = scores if scores.is_dir() else scores.parent
    try:
        name = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("embedder")
    except (OSError, ValueError):
        name = None
    return str(name) if name else f"embedding of {folder.name}"
