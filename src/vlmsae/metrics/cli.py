"""CLI of the metrics stage: ``vlmsae score``, ``top-images``, ``uniqueness``, ``hierarchy``,
``agreement``, ``grid`` and ``ms-table``. Each parses its options, calls one library function
(:mod:`vlmsae.metrics.score_files`, :mod:`vlmsae.metrics.artifacts`) and prints what it wrote.
Heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vlmsae.core.cli_options import progress_options
from vlmsae.core.numbers import fmt


def register(app: typer.Typer) -> None:
    app.command("score")(progress_options(score))
    app.command("top-images")(progress_options(top_images_cmd))
    app.command("uniqueness")(progress_options(uniqueness_cmd))
    app.command("hierarchy")(progress_options(hierarchy_cmd))
    app.command("agreement")(agreement_cmd)
    app.command("grid")(grid_cmd)
    app.command("ms-table")(ms_table_cmd)


def score(
    activations: Path = typer.Option(..., help="Store of activations or SAE codes (kind=codes)."),
    embeddings: Path = typer.Option(..., help="Embedding store, one row per image (DINOv2)."),
    out: Path = typer.Option(..., help="Output directory."),
    sae: Path | None = typer.Option(
        None, help="SAE (folder, hub id, SAELens or dictionary_learning folder): score its codes."
    ),
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
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something else (see docs)."
    ),
) -> None:
    """Monosemanticity Score of every neuron: scores.csv/.npy, summary.json, ms_hist.png,
    table.md (and raw_scores.npy with the SAE vs raw comparison)."""
    from vlmsae.metrics.score_files import write_scores

    summary = write_scores(activations, embeddings, out, sae=sae, raw=raw, aggregate=aggregate,
                           chunk_rows=chunk_rows, name=name, allow_mismatch=allow_mismatch,
                           min_active=min_active, overwrite=overwrite)  # fmt: skip
    s = summary["ms"]
    typer.echo(
        f"MS under the {summary['embedder']} embedding over {summary['n_images']:,} images, "
        f"{s['n_neurons']:,} neurons: mean "
        f"{fmt(s['mean'])} ± {fmt(s['std'])}, max {fmt(s['max'])} (over neurons active on >= "
        f"{min_active} images: "
        f"{fmt(summary['max_ms_active'])}; p99 {fmt(summary['p99_ms'])}), "
        f"undefined {s['n_undefined']:,} → {out}"
    )


def top_images_cmd(
    codes: Path = typer.Argument(..., help="Store of SAE codes or activations."),
    out: Path = typer.Option(..., help="Output directory."),
    sae: Path | None = typer.Option(
        None, help="SAE (folder, hub id, SAELens or dictionary_learning folder): rank its codes."
    ),
    k: int = typer.Option(16, help="Images kept per neuron."),
    aggregate: Literal["max", "mean"] = typer.Option("max", help="Several rows per image."),
    chunk_rows: int = typer.Option(1 << 16, help="Rows read at a time."),
    allow_mismatch: bool = typer.Option(
        False, help="Apply --sae even where it was trained on another source (warns)."
    ),
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something else (see docs)."
    ),
) -> None:
    """Top-k images of every neuron: top_indices.npy, top_values.npy, summary.json."""
    from vlmsae.metrics.artifacts import write_top_images

    run = write_top_images(codes, out, sae=sae, k=k, aggregate=aggregate, chunk_rows=chunk_rows,
                           allow_mismatch=allow_mismatch, overwrite=overwrite)  # fmt: skip
    typer.echo(
        f"top-{k} images of {run.n_neurons} neurons ({run.n_dead} with k-th value 0) → {out}"
    )


def uniqueness_cmd(
    top: Path = typer.Argument(..., help="Output directory of `vlmsae top-images`."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
    min_active: int = typer.Option(
        16, "--min-active", help="Neurons need this many active images (the paper: 16)."
    ),
) -> None:
    """Pairwise Jaccard of top-image sets: pairs above 0.0, 0.1 … 0.9, among the neurons
    whose MIN_ACTIVE-th top activation is non-zero (the paper's rule)."""
    from vlmsae.metrics.artifacts import write_uniqueness

    res = write_uniqueness(top, json_path, min_active)
    typer.echo(
        f"{res['n_neurons_dropped']} neurons active on fewer than {min_active} images left out"
    )
    for t, c in res["pairs_above"].items():
        typer.echo(f"Jaccard > {t}: {c} of {res['n_pairs']} pairs")


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
    from vlmsae.metrics.artifacts import parse_ids, write_hierarchy

    res = write_hierarchy(top, images=images, labels=labels, group_sizes=parse_ids(group_sizes),
                          sae=sae, json_path=json_path, min_active=min_active,
                          round_depth=round_depth)  # fmt: skip
    pairs = zip(res["group_mean_depth"], res["group_majority_depth"], strict=True)
    for g, (m, j) in enumerate(pairs):
        typer.echo(f"group {g}: mean LCA depth {fmt(m)}, majority {fmt(j)}")


def agreement_cmd(
    pairs: Path = typer.Argument(..., help="Benchmark CSV: k_x,k_y,R_user,MS_x_*,MS_y_*."),
    scores: list[str] = typer.Option([], help="NAME=PATH of vlmsae scores (.npy or scores.csv)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
) -> None:
    """How often the neuron with the higher MS is the one users preferred."""
    from vlmsae.metrics.agreement import agreement_markdown
    from vlmsae.metrics.artifacts import write_agreement

    typer.echo(agreement_markdown(write_agreement(pairs, scores, json_path)))


def grid_cmd(
    top: Path = typer.Argument(..., help="Output directory of `vlmsae top-images`."),
    images: Path = typer.Option(..., help="Store whose images.txt lists the image paths."),
    out: Path = typer.Option(..., help="PNG file to write."),
    scores: Path | None = typer.Option(
        None, help="`vlmsae score` output (its folder or scores.npy)."
    ),
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
    from vlmsae.metrics.artifacts import parse_ids, write_grid

    run = write_grid(top, images, out, scores=scores, neurons=parse_ids(neurons), top_n=top_n,
                     group=group, group_sizes=parse_ids(group_sizes), n_images=n_images,
                     min_active=min_active)  # fmt: skip
    rule = "" if neurons else f" (ranked among neurons active on >= {min_active} images)"
    typer.echo(
        f"{run.n_neurons} neurons{rule}, {run.drawn} images, {run.unreadable} unreadable → {out}"
    )


def ms_table_cmd(
    runs: list[Path] = typer.Argument(..., help="Output directories of `vlmsae score`."),
    out: Path | None = typer.Option(None, help="Markdown file to write."),
) -> None:
    """The paper's Table (max MS per layer × expansion × architecture) and the sparsity /
    reconstruction trade-off over a set of scored SAEs."""
    from vlmsae.metrics.artifacts import write_ms_table

    typer.echo(write_ms_table(runs, out))
