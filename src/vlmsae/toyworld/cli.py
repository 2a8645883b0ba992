"""CLI of the toy world: ``vlmsae toyworld build|evaluate|export|oracle``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmsae.core.cli_options import progress_options
from vlmsae.core.numbers import pct

toyworld_app = typer.Typer(
    help="The built-in ground-truth world and its tiny CLIP and LLaVA.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("build")
@progress_options
def build(
    out: Path = typer.Option(
        Path("runs/toyworld-models"),
        help="Models folder (`toyworld.MODELS_DIR` is the shipped one).",
    ),
    seed: int = typer.Option(0, help="World and weight seed."),
    world: str = typer.Option("shapes", help="Toy world: shapes or emoji."),
    n_train: int = typer.Option(None, help="Training images (default: the recipe's)."),
    clip_steps: int = typer.Option(None, help="Toy CLIP steps (default: the recipe's)."),
    llava_steps: int = typer.Option(None, help="Toy LLaVA stage-2 steps (default: recipe)."),
    dino_steps: int = typer.Option(None, help="Toy DINOv2 (embedder) steps (default: recipe)."),
    stages: str = typer.Option(
        "clip,llava,dino",
        help="Models to train, comma-separated: clip, llava (around the CLIP in OUT), dino "
        "(the independent embedder: images only).",
    ),
    threads: int = typer.Option(1, help="torch CPU threads (part of the deterministic recipe)."),
    only_llava: bool = typer.Option(
        False, "--only-llava", help="Retrain only the LLaVA, around the CLIP already in OUT."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the models OUT already holds (else refused)."
    ),
) -> None:
    """Train the toy CLIP, LLaVA and DINOv2 of a world from scratch, deterministically, and
    save them.

    With ``--world emoji`` and Noto Color Emoji installed, the glyphs are re-rendered from
    the font and compared with the shipped atlas first."""
    from dataclasses import replace

    from vlmsae.toyworld.build import STAGES, build_toyworld, default_config
    from vlmsae.toyworld.worlds import get_world

    cfg = replace(default_config(get_world(world).name, seed), threads=threads)
    if n_train is not None:
        cfg = replace(cfg, n_train=n_train)
    if clip_steps is not None:
        cfg = replace(cfg, clip=replace(cfg.clip, steps=clip_steps))
    if llava_steps is not None:
        cfg = replace(cfg, llava=replace(cfg.llava, tune_steps=llava_steps))
    if dino_steps is not None:
        cfg = replace(cfg, dino=replace(cfg.dino, steps=dino_steps))
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    if only_llava:
        chosen = ("llava",)
    if not chosen or set(chosen) - set(STAGES):
        raise typer.BadParameter(f"choose among {', '.join(STAGES)}", param_hint="--stages")
    record = build_toyworld(out, config=cfg, stages=chosen, overwrite=overwrite)
    typer.echo(json.dumps(record["timings"], indent=2))


@toyworld_app.command("evaluate")
@progress_options
def evaluate(
    models: Path = typer.Option(None, help="Models folder (default: the shipped models)."),
    world: str = typer.Option("shapes", help="Toy world: shapes or emoji."),
    n: int = typer.Option(500, help="Held-out images to evaluate on."),
    seed: int = typer.Option(0, help="World seed of the sample."),
    split: str = typer.Option("test", help="Split to sample: val or test."),
    out: Path = typer.Option(Path("runs/toyworld-eval"), help="Folder for summary.json."),
    json_path: Path = typer.Option(None, "--json", help="Also write the summary here."),
) -> None:
    """Accuracy of the toy models on held-out images, against the bars."""
    from vlmsae.core.io import write_json
    from vlmsae.toyworld.evaluate import evaluate_toyworld

    summary = evaluate_toyworld(models, n=n, seed=seed, split=split, world=world)
    width = max(18, *(len(name) + 2 for name in summary["metrics"]))
    typer.echo(f"{'metric':<{width}}{'accuracy':>10}{'bar':>8}  ok")
    for name, value in summary["metrics"].items():
        bar = summary["bars"].get(name)
        ok = "" if bar is None else ("yes" if value >= bar else "NO")
        bar_s = "-" if bar is None else f"{bar:.0%}"
        typer.echo(f"{name:<{width}}{pct(value):>10}{bar_s:>8}  {ok}".rstrip())
    write_json(out / "summary.json", summary)
    if json_path is not None:
        write_json(json_path, summary)
    typer.echo(f"summary: {out / 'summary.json'}")


@toyworld_app.command("export")
@progress_options
def export(
    out: Path = typer.Argument(..., help="Dataset root; images go to OUT/SPLIT/NNNNN_.../."),
    split: str = typer.Option("test", help="train, val or test."),
    n: int = typer.Option(1000, help="Number of images."),
    seed: int = typer.Option(0, help="World seed."),
    world: str = typer.Option("shapes", help="Toy world: shapes or emoji."),
) -> None:
    """Write images of the world as an iNaturalist-style ImageFolder + attributes.csv."""
    from vlmsae.toyworld.export import export_imagefolder

    typer.echo(str(export_imagefolder(out, split, n, seed, world=world)))


@toyworld_app.command("oracle")
def oracle(
    split_dir: Path = typer.Argument(..., help="An exported split folder (OUT/SPLIT)."),
    out: Path = typer.Argument(..., help="Embedding store to write."),
) -> None:
    """Write the ground-truth (oracle) embedding of an exported split as an embedding store."""
    from vlmsae.toyworld.embeddings import write_oracle_embeddings

    store = write_oracle_embeddings(split_dir, out)
    typer.echo(f"{out}: {len(store)} rows x {store.d}")
