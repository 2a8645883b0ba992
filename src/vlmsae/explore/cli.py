"""CLI of the browser: ``vlmsae explore`` and ``vlmsae label``. Heavy imports happen inside."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options
from vlmsae.explore.probe import ProbeConfig
from vlmsae.explore.site import ExploreConfig

log = logging.getLogger(__name__)
SITE_OPTIONS = ConfigOptions(ExploreConfig, flags={"n_neighbours": "--neighbours"})
PROBE_OPTIONS = ConfigOptions(
    ProbeConfig,
    skip=("neurons",),  # --steer-neurons: ids checked by parse_ids
    prefix="steer",
    flags={"n_neurons": "--steer-top", "prompt": "--steer-prompt"},
    choices={"mode": ("replace", "preserve")},
    help={
        "n_neurons": "Probe the K most monosemantic neurons active on >= --min-active "
        "images (--llava)."
    },
)


def register(app: typer.Typer) -> None:
    from vlmsae.formats.export import register_format

    app.command("explore")(explore_cmd)
    app.command("label")(label_cmd)
    register_format("neuronpedia", "an explorer site (vlmsae explore --out SITE)", _neuronpedia)


def _neuronpedia(source: Path, out: Path) -> str:
    from vlmsae.core.errors import UserError
    from vlmsae.core.lock import lock_until_exit
    from vlmsae.explore.neuronpedia import export_command

    if not (source / "data" / "index.js").is_file():
        raise UserError(
            f"{source} is not an explorer site (no data/index.js): --format neuronpedia "
            "exports a site built by `vlmsae explore --out SITE`"
        )
    lock_until_exit(out, "vlmsae export")  # one writer per output directory
    return export_command(source, out)


def serve(site_dir: Path, port: int, host: str = "127.0.0.1") -> None:
    """Serve the site on http://HOST:PORT/ until interrupted: its own files and the images
    it lists, nothing else (:mod:`vlmsae.explore.serve`)."""
    from vlmsae.explore.serve import serve_site

    serve_site(site_dir, port, host, echo=typer.echo)


@config_options(site=SITE_OPTIONS, probe_args=PROBE_OPTIONS)
def explore_cmd(
    out: Path = typer.Option(..., help="Directory of the site (index.html)."),
    sae: Path | None = typer.Option(None, help="SAE checkpoint directory."),
    raw: bool = typer.Option(
        False, "--raw", help="Browse the store's raw neurons (its dimensions) instead of an SAE."
    ),
    activations: Path | None = typer.Option(None, help="Activation store at the SAE's hook."),
    scores: Path | None = typer.Option(None, help="`vlmsae score` output of this SAE (MS)."),
    embeddings: list[str] | None = typer.Option(
        None,
        help="Embedding store to compute MS with, one MS column each (repeatable; NAME=PATH "
        "names the embedder, else the store's model names it).",
    ),
    labels: Path | None = typer.Option(None, help="labels.csv written by `vlmsae label`."),
    model: str | None = typer.Option(
        None, help="Vision model of the store: heatmaps for stores without patch tokens."
    ),
    cards: str | None = typer.Option(
        None,
        help="Neuron ids (3,17): write their cards as PNG (+SVG, PDF) to OUT/cards/; "
        "with only --out, from a site built before.",
    ),
    llava: str | None = typer.Option(
        None,
        help="LLaVA (id or folder; 'toyworld' = the shipped toy LLaVA of the store's world, "
        "'toyworld:emoji' of that world) whose vision "
        "tower the SAE reads: the steering probe on the neuron pages.",
    ),
    steer_neurons: str | None = typer.Option(
        None, help="Probe these neuron ids (3,17) instead of the most monosemantic (--llava)."
    ),
    serve_site: bool = typer.Option(False, "--serve", help="Serve the site on localhost."),
    port: int = typer.Option(8000, help="Port of --serve."),
    host: str = typer.Option(
        "127.0.0.1", help="Address --serve listens on (another than loopback: a warning)."
    ),
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something other than a site."
    ),
    *,
    site: ConfigArgs[ExploreConfig],
    probe_args: ConfigArgs[ProbeConfig],
) -> None:
    """Build the neuron browser: a static site that opens from the file system
    (OUT/index.html) or, with --serve, on http://127.0.0.1:PORT/."""
    from vlmsae.core.errors import UserError

    if raw and sae is not None:
        raise UserError("give either --sae SAE or --raw (the store's raw neurons), not both")
    from vlmsae.explore.cards import parse_ids, write_cards

    card_ids = parse_ids(cards, "--cards") if cards is not None else None
    if (sae is None and not raw) or activations is None:
        reuse = (serve_site or card_ids) and sae is None and activations is None
        if reuse and (out / "index.html").is_file():
            from vlmsae.core.outputs import checked_manifest

            checked_manifest(out, f"the site {out}")  # not one an interrupted build left
            if card_ids:
                _echo_cards(write_cards(out, card_ids, out / "cards"))
            if serve_site:
                serve(out, port, host)
            return
        raise UserError(
            "give --sae SAE (or --raw) and --activations STORE to build the site (or only "
            "--serve / --cards with --out DIR for a site built before)"
        )
    from vlmsae.core.lock import lock_until_exit
    from vlmsae.explore.build import build_site

    probe = None
    if llava is not None:
        from vlmsae.explore.labels import toy_world_spec

        toy = toy_world_spec(llava, _store_world(activations))
        if toy is not None:
            from vlmsae.toyworld import llava_path

            llava = str(llava_path(world=toy.name))
        ids = parse_ids(steer_neurons, "--steer-neurons") if steer_neurons else None
        probe = probe_args.build(neurons=tuple(ids) if ids else None)
    cfg = site.build()
    from vlmsae.core.outputs import check_out_free
    from vlmsae.explore.site import SITE_ENTRIES

    inputs = (sae, activations, scores, embeddings, labels)
    check_out_free(out, "explore", owns=SITE_ENTRIES, inputs=inputs, overwrite=overwrite)
    res = build_site(  # checks its inputs, computes, then writes the site under its lock
        sae, activations, out, scores=scores, embeddings=embeddings, labels=labels,
        model=model, cfg=cfg, llava=llava, probe=probe, overwrite=overwrite,
    )  # fmt: skip
    lock_until_exit(out, "vlmsae explore")  # --cards write into the site
    missing = f", {res.n_images_missing} images unreadable" if res.n_images_missing else ""
    typer.echo(f"explorer of {res.n_neurons} neurons ({res.n_shards} shards{missing}) → "
               f"{res.index_html.resolve().as_uri()}")  # fmt: skip
    if card_ids:
        _echo_cards(write_cards(out, card_ids, out / "cards"))
    if serve_site:
        serve(out, port, host)


def _store_world(activations: Path) -> object:
    """The toy world of the store's exported split (None: not one)."""
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.truth import toy_world

    return toy_world(ActivationStore(activations))


def _echo_cards(paths: list[Path]) -> None:
    typer.echo(f"{len(paths)} neuron cards (PNG, SVG, PDF) → {paths[0].parent}")


def label_cmd(
    sae: Path = typer.Option(
        ..., help="SAE (folder, hub id, SAELens or dictionary_learning folder)."
    ),
    activations: Path = typer.Option(..., help="Activation store at the SAE's hook."),
    out: Path = typer.Option(..., help="Output directory: labels.csv, summary.json."),
    clip: str | None = typer.Option(
        None,
        help="CLIP-family model (id or folder); 'toyworld' = the shipped toy CLIP of the "
        "store's world ('toyworld:emoji': of that world); default the store's model.",
    ),
    vocab: str = typer.Option(
        "imagenet",
        help="imagenet, toyworld (the store's toy world; toyworld:emoji names one), dataset "
        "(class folders) or a word-list file.",
    ),
    template: str = typer.Option("a photo of a {}.", help="Prompt of each word."),
    top_k: int = typer.Option(16, help="Top images per neuron."),
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something else (see docs)."
    ),
) -> None:
    """Name every neuron by zero-shot matching of its top images (activation weighted)
    against a vocabulary with a CLIP text tower; on the toy world, also the accuracy."""
    from vlmsae.explore.labels import label_accuracy_text, label_sae

    summary = label_sae(sae, activations, out, clip=clip, vocab=vocab, template=template,
                        top_k=top_k, overwrite=overwrite)  # fmt: skip
    line = f"{summary['n_labelled']} of {summary['n_neurons']} neurons labelled → {out}"
    t = summary.get("toyworld")
    if t is not None:
        line += "; toy world: " + label_accuracy_text(t)
    typer.echo(line)
