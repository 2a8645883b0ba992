"""CLI of the browser: ``vlmsae explore`` and ``vlmsae label``. Heavy imports happen inside."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("explore")(explore_cmd)
    app.command("label")(label_cmd)


def serve(site_dir: Path, port: int) -> None:
    """Serve ``site_dir`` on http://127.0.0.1:PORT until interrupted."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site_dir))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        from vlmsae.errors import UserError

        raise UserError(f"cannot listen on 127.0.0.1:{port} ({e}); choose another --port") from e
    typer.echo(f"serving {site_dir} on http://127.0.0.1:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def explore_cmd(
    out: Path = typer.Option(..., help="Directory of the site (index.html)."),
    sae: Path | None = typer.Option(None, help="SAE checkpoint directory."),
    activations: Path | None = typer.Option(None, help="Activation store at the SAE's hook."),
    scores: Path | None = typer.Option(None, help="`vlmsae score` output of this SAE (MS)."),
    embeddings: Path | None = typer.Option(
        None, help="Embedding store to compute MS with (when --scores is not given)."
    ),
    labels: Path | None = typer.Option(None, help="labels.csv written by `vlmsae label`."),
    model: str | None = typer.Option(
        None, help="Vision model of the store: heatmaps for stores without patch tokens."
    ),
    copy_images: bool = typer.Option(
        False, "--copy-images", help="Copy thumbnails into the site (portable)."
    ),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Patch heatmaps."),
    top_k: int = typer.Option(16, help="Top images per neuron."),
    neighbours: int = typer.Option(5, help="Nearest neurons listed per neuron."),
    serve_site: bool = typer.Option(False, "--serve", help="Serve the site on localhost."),
    port: int = typer.Option(8000, help="Port of --serve."),
) -> None:
    """Build the neuron browser: a static site that opens from the file system
    (OUT/index.html) or, with --serve, on http://127.0.0.1:PORT/."""
    from vlmsae.errors import UserError

    if sae is None or activations is None:
        if serve_site and (out / "index.html").is_file() and sae is None and activations is None:
            serve(out, port)
            return
        raise UserError(
            "give --sae SAE and --activations STORE to build the site (or only --serve --out "
            "DIR to serve a site built before)"
        )
    from vlmsae._lock import lock_until_exit
    from vlmsae.explore.build import build_site
    from vlmsae.explore.site import ExploreConfig

    cfg = ExploreConfig(
        top_k=top_k, n_neighbours=neighbours, copy_images=copy_images, heatmaps=heatmaps
    )
    lock_until_exit(out, "vlmsae explore")  # one writer per output directory
    res = build_site(
        sae, activations, out, scores=scores, embeddings=embeddings, labels=labels,
        model=model, cfg=cfg,
    )  # fmt: skip
    missing = f", {res.n_images_missing} images unreadable" if res.n_images_missing else ""
    typer.echo(f"explorer of {res.n_neurons} neurons ({res.n_shards} shards{missing}) → "
               f"{res.index_html.resolve().as_uri()}")  # fmt: skip
    if serve_site:
        serve(out, port)


def label_cmd(
    sae: Path = typer.Option(..., help="SAE checkpoint directory."),
    activations: Path = typer.Option(..., help="Activation store at the SAE's hook."),
    out: Path = typer.Option(..., help="Output directory: labels.csv, summary.json."),
    clip: str | None = typer.Option(
        None,
        help="CLIP-family model (id or folder); 'toyworld' = the shipped toy CLIP; "
        "default the store's model.",
    ),
    vocab: str = typer.Option(
        "imagenet", help="imagenet, toyworld, dataset (class folders) or a word-list file."
    ),
    template: str = typer.Option("a photo of a {}.", help="Prompt of each word."),
    top_k: int = typer.Option(16, help="Top images per neuron."),
) -> None:
    """Name every neuron by zero-shot matching of its top images (activation weighted)
    against a vocabulary with a CLIP text tower; on the toy world, also the accuracy."""
    import numpy as np

    from vlmsae._io import atomic_write_text, write_json
    from vlmsae._lock import lock_until_exit
    from vlmsae.data.store import ActivationStore
    from vlmsae.errors import UserError
    from vlmsae.explore import labels as lab
    from vlmsae.explore.build import _check_fits
    from vlmsae.explore.neurons import encode_rows, per_image
    from vlmsae.explore.truth import toy_labels
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.top_images import top_images
    from vlmsae.sae import SAE

    model, store = SAE.load(sae), ActivationStore(activations)
    _check_fits(model, store)
    if not store.images:
        raise UserError(f"the store {activations} lists no images (images.jsonl): cannot label")
    if clip == "toyworld":
        from vlmsae.toyworld import clip_path

        clip = str(clip_path())
    clip = clip or store.manifest.get("model")
    if not clip:
        raise UserError("the store names no model; give --clip MODEL (a CLIP-family model)")
    vocabulary = lab.load_vocabulary(vocab, template, store.images)
    lock_until_exit(out, "vlmsae label")
    codes_NS = per_image(encode_rows(model, store), image_index_of(store))
    top = top_images(codes_NS, top_k)
    result = lab.label_neurons(clip, store.images, top.indices, top.values, vocabulary)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["neuron,label,margin,score"]
    for s, (name, m, c) in enumerate(zip(result.label, result.margin, result.score, strict=True)):
        text = "" if name is None else '"' + name.replace('"', '""') + '"'
        num = ("", "") if name is None else (f"{m:.6f}", f"{c:.6f}")
        rows.append(f"{s},{text},{num[0]},{num[1]}")
    atomic_write_text(out / "labels.csv", "\n".join(rows) + "\n")
    summary = {"sae": str(sae), "activations": str(activations), "clip": str(clip),
               "vocab": vocab, "n_words": len(vocabulary.words), "template": template,
               "n_labelled": int(sum(x is not None for x in result.label))}  # fmt: skip
    truth = toy_labels(store)
    if truth is not None:
        from vlmsae.metrics.ms import monosemanticity

        ms = monosemanticity(codes_NS, lab.oracle_embedding_of(truth)).ms
        valid = np.where(top.values > 0, top.indices, -1)
        summary["toyworld"] = lab.toy_accuracy(result, valid, truth, ms)
    write_json(out / "summary.json", summary)
    line = f"{summary['n_labelled']} of {model.cfg.d_sae} neurons labelled → {out / 'labels.csv'}"
    if truth is not None:
        t = summary["toyworld"]
        acc = "n/a" if t["accuracy"] is None else f"{t['accuracy']:.1%}"
        line += (f"; toy world: {t['n_correct']} of {t['n_neurons']} neurons with oracle MS >= "
                 f"{t['min_oracle_ms']} carry a true concept ({acc})")  # fmt: skip
    typer.echo(line)
