"""CLI of the metrics stage: ``vlmsae score``, ``top-images``, ``uniqueness``, ``hierarchy``,
``agreement``, ``grid`` and ``ms-table``. Heavy imports happen inside the commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import typer

from vlmsae.core.cli_options import progress_options
from vlmsae.core.errors import UserError
from vlmsae.core.lock import lock_until_exit
from vlmsae.core.numbers import fmt

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("score")(progress_options(score))
    app.command("top-images")(progress_options(top_images_cmd))
    app.command("uniqueness")(progress_options(uniqueness_cmd))
    app.command("hierarchy")(progress_options(hierarchy_cmd))
    app.command("agreement")(agreement_cmd)
    app.command("grid")(grid_cmd)
    app.command("ms-table")(ms_table_cmd)


def _save_npy(path: Path, arr) -> None:
    """Atomic ``np.save`` without pickle (np.save on a path would append ``.npy``)."""
    import numpy as np

    from vlmsae.core.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, write)


def _ints(text: str | None) -> list[int] | None:
    return [int(t) for t in text.replace(" ", "").split(",") if t] if text else None


def _per_image(x, image_R, aggregate: str, chunk_rows: int):
    """One row per image: ``x`` itself, or its rows aggregated per image in memory (under
    ``torchrun``: this rank's share of the images; the metrics read no other)."""
    from vlmsae.metrics.sae_codes import aggregate_share

    if image_R is None:
        return x
    log.info("several rows per image: aggregating them per image (%s)", aggregate)
    return aggregate_share(x, image_R, aggregate, chunk_rows)


def score(
    activations: Path = typer.Option(..., help="Store of activations or SAE codes (kind=codes)."),
    embeddings: Path = typer.Option(..., help="Embedding store, one row per image (DINOv2)."),
    out: Path = typer.Option(..., help="Output directory."),
    sae: Path | None = typer.Option(None, help="SAE checkpoint: score its codes of ACTIVATIONS."),
    raw: Path | None = typer.Option(
        None, help="Raw activation store to compare a code store with."
    ),
    aggregate: Literal["max", "mean"] = typer.Option("max", help="Several rows per image."),
    chunk_rows: int = typer.Option(8192, help="Images read at a time."),
    name: str | None = typer.Option(None, help="Name of this run in tables (default: out dir)."),
    allow_mismatch: bool = typer.Option(
        False, help="Score even where the images or the SAE's source do not match (warns)."
    ),
    min_active: int = typer.Option(
        16, "--min-active", help="Robust max MS: over neurons active on >= this many images."
    ),
) -> None:
    """Monosemanticity Score of every neuron: scores.csv/.npy, summary.json, ms_hist.png,
    table.md (and raw_scores.npy with the SAE vs raw comparison)."""
    import numpy as np

    from vlmsae.core.io import atomic_write_text, write_json
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.fit import check_score_inputs, with_neuron_count
    from vlmsae.metrics.maxms import max_ms_summary
    from vlmsae.metrics.ms import compare_sae_raw, monosemanticity, summarize_ms
    from vlmsae.metrics.sae_codes import image_share_rows, sae_codes_of_rows
    from vlmsae.metrics.tables import ms_tables, tradeoff_table
    from vlmsae.report.figures import ms_histogram

    acts_store, emb = ActivationStore(activations), ActivationStore(embeddings)
    image_R = image_index_of(acts_store)
    raw_store = ActivationStore(raw) if raw is not None and sae is None else None
    provenance = check_score_inputs(acts_store, emb, image_R, sae_dir=sae, raw_store=raw_store,
                                    allow_mismatch=allow_mismatch)  # fmt: skip
    lock_until_exit(out, "vlmsae score")  # one writer per output directory
    acts = _per_image(acts_store, image_R, aggregate, chunk_rows)
    summary: dict = {"activations": str(activations), "embeddings": str(embeddings)}
    summary.update({k: acts_store.manifest.get(k) for k in ("model", "hookpoint", "layer")})
    raw_acts, model = None, None
    if sae is not None:
        # encode every token (of this rank's images), then aggregate the codes per image
        span = image_share_rows(image_R, len(acts_store))
        model, codes, rec = sae_codes_of_rows(sae, acts_store, chunk_rows, span)
        codes = _per_image(codes, image_R, aggregate, chunk_rows)
        summary.update(sae=str(sae), arch=model.cfg.arch, k=model.cfg.k, **rec)
        summary["expansion"] = model.cfg.d_sae // model.cfg.d_in
        summary["group_sizes"] = list(model.cfg.group_sizes)
        raw_acts, acts = acts, codes
    elif raw_store is not None:
        raw_acts = _per_image(raw_store, image_index_of(raw_store), aggregate, chunk_rows)
    res = monosemanticity(acts, emb, chunk_rows=chunk_rows, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "scores.npy", res.ms)
    lines = ["neuron,ms,n_active,max_activation"]
    lines += [
        f"{k},{'' if np.isnan(m) else f'{m:.6f}'},{n},{a:.6g}"
        for k, (m, n, a) in enumerate(zip(res.ms, res.n_active, res.max_activation, strict=True))
    ]
    atomic_write_text(out / "scores.csv", "\n".join(lines) + "\n")
    summary.update(artifact="scores", **with_neuron_count(provenance, len(res.ms)))
    summary["name"] = name or out.name
    summary["n_images"] = res.n_images
    summary["ms"] = summarize_ms(res.ms)
    summary["mean_ms"] = summary["ms"]["mean"]
    summary.update(max_ms_summary(res.ms, res.n_active, min_active))  # max_ms is the paper's
    if summary["max_ms"] is None:
        why = f"undefined: all {len(res.ms)} neurons are dead or constant on these images"
        summary["mean_ms_reason"] = summary["max_ms_reason"] = why
    hist = {"SAE" if raw_acts is not None or acts_store.is_sparse else "neurons": res.ms}
    if raw_acts is not None:
        raw_ms = monosemanticity(raw_acts, emb, chunk_rows=chunk_rows).ms
        _save_npy(out / "raw_scores.npy", raw_ms)
        summary["raw_ms"] = summarize_ms(raw_ms)
        try:
            summary["sae_vs_raw"] = compare_sae_raw(res.ms, raw_ms)
        except ValueError as e:  # every SAE or every raw neuron is undefined
            summary["sae_vs_raw"], summary["sae_vs_raw_reason"] = None, f"undefined: {e}"
        hist["raw"] = raw_ms
    ms_histogram(out / "ms_hist.png", hist)
    atomic_write_text(out / "table.md", ms_tables([summary]) + "\n" + tradeoff_table([summary]))
    write_json(out / "summary.json", summary)
    s = summary["ms"]
    typer.echo(
        f"MS over {res.n_images:,} images, {len(res.ms):,} neurons: mean {fmt(s['mean'])} ± "
        f"{fmt(s['std'])}, max {fmt(s['max'])} (over neurons active on >= {min_active} images: "
        f"{fmt(summary['max_ms_active'])}; p99 {fmt(summary['p99_ms'])}), "
        f"undefined {s['n_undefined']:,} → {out}"
    )


def top_images_cmd(
    codes: Path = typer.Argument(..., help="Store of SAE codes or activations."),
    out: Path = typer.Option(..., help="Output directory."),
    sae: Path | None = typer.Option(None, help="SAE checkpoint: rank its codes of CODES."),
    k: int = typer.Option(16, help="Images kept per neuron."),
    aggregate: Literal["max", "mean"] = typer.Option("max", help="Several rows per image."),
    chunk_rows: int = typer.Option(1 << 16, help="Rows read at a time."),
    allow_mismatch: bool = typer.Option(
        False, help="Apply --sae even where it was trained on another source (warns)."
    ),
) -> None:
    """Top-k images of every neuron: top_indices.npy, top_values.npy, summary.json."""

    from vlmsae.core.io import write_json
    from vlmsae.data.store import ActivationStore
    from vlmsae.metrics._source import image_index_of, rank_span
    from vlmsae.metrics.fit import check_top_inputs, with_neuron_count
    from vlmsae.metrics.sae_codes import sae_codes_of_rows
    from vlmsae.metrics.top_images import top_images

    store = ActivationStore(codes)
    provenance = check_top_inputs(store, sae, allow_mismatch=allow_mismatch)
    lock_until_exit(out, "vlmsae top-images")  # one writer per output directory
    source, image_R = store, image_index_of(store)
    if sae is not None:  # the codes of the rows top_images reads on this rank
        span = rank_span(len(store), image_R)
        source = sae_codes_of_rows(sae, store, chunk_rows, span).codes
    top = top_images(source, k, image_index=image_R, aggregate=aggregate, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "top_indices.npy", top.indices)
    _save_npy(out / "top_values.npy", top.values)
    dead = int((~top.kept(k)).sum())  # the paper's rule at k: k-th value == 0
    write_json(
        out / "summary.json",
        {"store": str(codes), "sae": str(sae) if sae else None, "k": k, "aggregate": aggregate,
         "n_neurons": len(top.indices), "n_dead_kth_zero": dead, "artifact": "top_images",
         **with_neuron_count(provenance, len(top.indices))},
    )  # fmt: skip
    typer.echo(f"top-{k} images of {len(top.indices)} neurons ({dead} with k-th value 0) → {out}")


def _load_top(top_dir: Path):
    import numpy as np

    return np.load(top_dir / "top_indices.npy"), np.load(top_dir / "top_values.npy")


def uniqueness_cmd(
    top: Path = typer.Argument(..., help="Output directory of `vlmsae top-images`."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
    min_active: int = typer.Option(
        16, "--min-active", help="Neurons need this many active images (the paper: 16)."
    ),
) -> None:
    """Pairwise Jaccard of top-image sets: pairs above 0.0, 0.1 … 0.9, among the neurons
    whose MIN_ACTIVE-th top activation is non-zero (the paper's rule)."""
    from vlmsae.core.io import write_json
    from vlmsae.metrics.top_images import TopImages
    from vlmsae.metrics.uniqueness import uniqueness

    res = uniqueness(TopImages(*_load_top(top)), min_active=min_active)
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
    typer.echo(f"{res.n_dropped} neurons active on fewer than {min_active} images left out")
    for t, c in out["pairs_above"].items():
        typer.echo(f"Jaccard > {t}: {c} of {res.n_pairs} pairs")


def hierarchy_cmd(
    top: Path = typer.Argument(..., help="Output directory of `vlmsae top-images`."),
    images: Path | None = typer.Option(None, help="Store whose images.txt names the images."),
    labels: Path | None = typer.Option(None, help="Text file: label path (a/b/c) per image."),
    group_sizes: str | None = typer.Option(None, help="Matryoshka group sizes, e.g. 64,192,768."),
    sae: Path | None = typer.Option(None, help="SAE checkpoint providing the group sizes."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
    min_active: int = typer.Option(
        16, "--min-active", help="Neurons need this many active images (the paper: 16)."
    ),
    round_depth: bool = typer.Option(
        True, "--round-depth/--exact-depth", help="Round each neuron's mean depth (the paper)."
    ),
) -> None:
    """Mean / majority LCA depth of top-image pairs per neuron, averaged per group."""
    import numpy as np

    from vlmsae.core.io import write_json
    from vlmsae.metrics.fit import check_images_for_top, check_sae_for_top
    from vlmsae.metrics.hierarchy import encode_taxonomy, hierarchy, label_paths_from_images
    from vlmsae.metrics.top_images import TopImages

    idx, val = _load_top(top)
    if labels is not None:
        paths = labels.read_text(encoding="utf-8").splitlines()
        if idx.size and int(idx.max()) >= len(paths):
            raise UserError(f"top images {top} point at image {int(idx.max())} but --labels "
                            f"{labels} has {len(paths)} lines (one per image)")  # fmt: skip
    elif images is not None:
        paths = label_paths_from_images(check_images_for_top(top, idx, images))
    else:
        raise typer.BadParameter("give --images STORE or --labels FILE")
    sizes = _ints(group_sizes)
    if sizes is None and sae is not None:
        from vlmsae.sae import SAE

        check_sae_for_top(top, sae)
        sizes = list(SAE.load(sae).cfg.group_sizes)
    res = hierarchy(
        encode_taxonomy(paths), TopImages(idx, val), sizes,
        min_active=min_active, round_depth=round_depth,
    )  # fmt: skip
    defined = res.mean_depth[~np.isnan(res.mean_depth)]
    out = {
        "group_sizes": sizes,
        "group_mean_depth": res.group_mean_depth.tolist(),
        "group_majority_depth": res.group_majority_depth.tolist(),
        "mean_depth": float(defined.mean()) if defined.size else None,
        "min_active": min_active,
        "n_neurons_kept": int(res.kept.sum()),
        "round_depth": round_depth,
    }
    write_json(json_path or top / "hierarchy.json", out)
    for g, (m, j) in enumerate(zip(res.group_mean_depth, res.group_majority_depth, strict=True)):
        typer.echo(f"group {g}: mean LCA depth {fmt(m)}, majority {fmt(j)}")


def agreement_cmd(
    pairs: Path = typer.Argument(..., help="Benchmark CSV: k_x,k_y,R_user,MS_x_*,MS_y_*."),
    scores: list[str] = typer.Option([], help="NAME=PATH of vlmsae scores (.npy or scores.csv)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
) -> None:
    """How often the neuron with the higher MS is the one users preferred."""
    import numpy as np

    from vlmsae.core.io import write_json
    from vlmsae.metrics.agreement import agreement, agreement_markdown, read_pairs

    p = read_pairs(pairs)
    results = {n: agreement(x, y, p.r_user) for n, (x, y) in p.scores.items()}
    for spec in scores:
        name, _, path = spec.rpartition("=")
        path = Path(path)
        if path.suffix == ".npy":
            ms = np.load(path)
        else:
            ms = np.genfromtxt(path, delimiter=",", names=True)["ms"]
        if max(p.k_x.max(), p.k_y.max()) >= len(ms):
            raise typer.BadParameter(f"{path} has {len(ms)} scores; the pairs name larger neurons")
        results[name or path.stem] = agreement(ms[p.k_x], ms[p.k_y], p.r_user)
    typer.echo(agreement_markdown(results))
    write_json(json_path or pairs.with_suffix(".agreement.json"), results)


def grid_cmd(
    top: Path = typer.Argument(..., help="Output directory of `vlmsae top-images`."),
    images: Path = typer.Option(..., help="Store whose images.txt lists the image paths."),
    out: Path = typer.Option(..., help="PNG file to write."),
    scores: Path | None = typer.Option(None, help="scores.npy of `vlmsae score`."),
    neurons: str | None = typer.Option(None, help="Neuron ids, e.g. 3,17,42."),
    top_n: int = typer.Option(8, help="Without --neurons: the N neurons of highest MS."),
    group: int | None = typer.Option(None, help="Restrict the ranking to a Matryoshka group."),
    group_sizes: str | None = typer.Option(None, help="Group sizes, e.g. 64,192,768."),
    n_images: int = typer.Option(16, help="Images per neuron."),
    min_active: int = typer.Option(
        16, "--min-active", help="Rank only neurons active on >= this many images."
    ),
) -> None:
    """PNG grid of each chosen neuron's top images, titled with its MS."""
    from vlmsae.metrics.fit import check_images_for_top, check_neuron_ids, check_scores_for_top
    from vlmsae.metrics.top_images import TopImages
    from vlmsae.report.grid import neuron_grid, select_neurons

    idx, val = _load_top(top)
    paths = check_images_for_top(top, idx, images)
    ms = check_scores_for_top(top, len(idx), scores) if scores else None
    check_neuron_ids(_ints(neurons), len(idx), top)
    chosen = select_neurons(
        ms, ids=_ints(neurons), top_n=top_n, group=group, group_sizes=_ints(group_sizes),
        alive_K=None if neurons else TopImages(idx, val).kept(min_active),
    )  # fmt: skip
    counts = neuron_grid(out, chosen, idx, paths, ms=ms, n_images=n_images)
    rule = "" if neurons else f" (ranked among neurons active on >= {min_active} images)"
    typer.echo(
        f"{len(chosen)} neurons{rule}, {counts['drawn']} images, "
        f"{counts['unreadable']} unreadable → {out}"
    )


def ms_table_cmd(
    runs: list[Path] = typer.Argument(..., help="Output directories of `vlmsae score`."),
    out: Path | None = typer.Option(None, help="Markdown file to write."),
) -> None:
    """The paper's Table (max MS per layer × expansion × architecture) and the sparsity /
    reconstruction trade-off over a set of scored SAEs."""
    from vlmsae.core.io import atomic_write_text
    from vlmsae.metrics.fit import read_score_summaries
    from vlmsae.metrics.tables import ms_tables, tradeoff_table

    records = read_score_summaries(runs)
    text = "## Max MS\n\n" + ms_tables(records) + "\n## Trade-off\n\n" + tradeoff_table(records)
    if out:
        atomic_write_text(out, text)
    typer.echo(text)
