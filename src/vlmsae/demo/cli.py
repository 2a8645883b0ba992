"""``vlmsae demo``: the paper's experiments end to end on the built-in toy world."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmsae.core.cli_options import progress_options


def register(app: typer.Typer) -> None:
    app.command("demo")(progress_options(demo))


def demo(
    out: Path = typer.Option(
        None, "--out", help="Output directory [runs/demo, or runs/demo-quick]."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A reduced run (about a minute) for CI and a first look."
    ),
    world: str = typer.Option(
        None,
        "--world",
        help="Toy world: emoji (341 emoji under Unicode's taxonomy) or shapes (the demo "
        "before the emoji world, 22 concept values) [emoji].",
    ),
    models_dir: Path = typer.Option(
        None,
        "--models-dir",
        help="Toy models of the world (a `vlmsae toyworld build` output) [the shipped ones].",
    ),
    steer: bool = typer.Option(True, "--steer/--no-steer", help="Run the steering section."),
    seed: int = typer.Option(0, "--seed", help="Seed of the world, data order and SAEs."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="Torch CPU threads. Toy-scale matrices are small: one thread is usually "
        "fastest, and much faster when other work shares the CPU.",
    ),
    json_path: Path = typer.Option(None, "--json", help="Also write the summary JSON here."),
    seeds: int = typer.Option(None, "--seeds", help="SAEs per configuration [3, quick 2]."),
    workers: int = typer.Option(2, "--workers", help="Processes training SAEs side by side."),
) -> None:
    """Cache the toy CLIP, train SAEs, score them against the ground truth, write a report.

    Runs on the emoji world by default; ``--world shapes`` runs the shapes world's demo.

    Everything goes to OUT: README.md and index.html (every table and figure with a line
    on what it shows), tables/*.csv, figures/*.png, summary.json, and the intermediate
    stores and SAE checkpoints. Rerunning skips the parts that are already complete.
    """

    import torch

    from vlmsae.core.io import write_json
    from vlmsae.demo.config import DemoConfig
    from vlmsae.demo.pipeline import run_demo
    from vlmsae.toyworld.worlds import get_world

    more = {
        "steer": steer,
        "seed": seed,
        "workers": workers,
        "models_dir": None if models_dir is None else str(models_dir),
        **({"world": get_world(world).name} if world else {}),  # unknown: one Error line
        **({"seeds": seeds} if seeds else {}),
    }
    if quick:
        cfg = DemoConfig.quick(**({"out_dir": str(out)} if out else {}), **more)
    else:
        cfg = DemoConfig(out_dir=str(out or "runs/demo"), **more)
    torch.set_num_threads(threads)
    result = run_demo(cfg)
    typer.echo("")
    for line in result.lines:
        typer.echo(line)
    typer.echo(f"\nreport: {result.report}\nREADME: {Path(cfg.out_dir) / 'README.md'}")
    if json_path is not None:
        write_json(json_path, result.summary)
