"""``vlmsae demo``: the paper's experiments end to end on the built-in toy world."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmsae.core.cli_errors import user_errors
from vlmsae.core.cli_options import progress_options
from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options
from vlmsae.demo.config import DemoConfig

DEMO_OPTIONS = ConfigOptions(
    DemoConfig,
    flags={"out_dir": "--out"},
    help={"out_dir": "Output directory (README.md and index.html at the top) [runs/demo, or "
          "runs/demo-quick with --quick]."},
)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("demo")(progress_options(demo))


@config_options(cfg=DEMO_OPTIONS)
def demo(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A reduced run (about a minute) for CI and a first look; the options given "
        "replace its settings.",
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        help="Torch CPU threads. Toy-scale matrices are small: one thread is usually "
        "fastest, and much faster when other work shares the CPU.",
    ),
    json_path: Path = typer.Option(None, "--json", help="Also write the summary JSON here."),
    *,
    cfg: ConfigArgs[DemoConfig],
) -> None:
    """Cache the toy CLIP, train SAEs, score them against the ground truth, write a report.

    Runs on the emoji world by default; ``--world shapes`` runs the shapes world's demo.

    Everything goes to OUT: README.md and index.html (every table and figure with a line
    on what it shows), tables/*.csv, figures/*.png, summary.json, and the intermediate
    stores and SAE checkpoints. Rerunning skips the parts that are already complete.
    """

    import torch

    from vlmsae.core.io import write_json
    from vlmsae.demo.pipeline import run_demo
    from vlmsae.toyworld.worlds import get_world

    given = {name: cfg.values[name] for name in cfg.given}
    if "world" in given:
        given["world"] = get_world(given["world"]).name  # unknown: one Error line
    with user_errors():  # the config's checks of the options
        config = DemoConfig.quick(**given) if quick else DemoConfig(**given)
    torch.set_num_threads(threads)
    result = run_demo(config)
    typer.echo("")
    for line in result.lines:
        typer.echo(line)
    typer.echo(f"\nreport: {result.report}\nREADME: {Path(config.out_dir) / 'README.md'}")
    if json_path is not None:
        write_json(json_path, result.summary)
