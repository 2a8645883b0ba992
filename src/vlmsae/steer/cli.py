"""CLI of the steering stage: ``vlmsae steer`` and ``vlmsae steer-eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vlmsae.core.cli_options import progress_options
from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options
from vlmsae.steer.compare import SteerEvalConfig
from vlmsae.steer.toy import ToySteeringConfig

TOY_OPTIONS = ConfigOptions(
    ToySteeringConfig,
    skip=("eval",),  # its fields: --eval-*
    defaults={"n_val": None},  # the CLI's: a quarter of --n-test
    help={"n_val": "val images per kind (α selection); default: a quarter of --n-test, >= 4."},
)
EVAL_OPTIONS = ConfigOptions(
    SteerEvalConfig, prefix="eval", choices={"mode": ("replace", "preserve")}
)


def register(app: typer.Typer) -> None:
    app.command("steer")(steer)
    app.command("steer-eval")(progress_options(steer_eval))


def steer(
    model: str = typer.Option(..., "--model", help="LLaVA hub id or folder."),
    sae_dir: Path = typer.Option(..., "--sae", help="SAE checkpoint trained on a vision block."),
    image: Path = typer.Option(..., "--image", help="Image file."),
    prompt: str = typer.Option(..., "--prompt", help="Question asked about the image."),
    neuron: list[int] = typer.Option(..., "--neuron", help="SAE neuron to clamp (repeatable)."),
    alpha: list[float] = typer.Option(
        ...,
        "--alpha",
        help="Clamp value, one per --neuron or one for all (> 0 inserts, <= 0 suppresses).",
    ),
    layer: int = typer.Option(None, "--layer", help="Vision block [the SAE's layer]."),
    mode: Literal["replace", "preserve"] = typer.Option(
        "replace", "--mode", help="replace (the paper) or preserve (error-preserving)."
    ),
    pre_zero: bool = typer.Option(False, "--pre-zero", help="Zero all other codes first."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens"),
    device: str = typer.Option("cpu", "--device"),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Steer with an SAE trained on the CLS token or the token mean (steering edits "
        "every image token; a warning says so).",
    ),
) -> None:
    """Print LLaVA's answer without and with SAE neurons clamped in its vision tower.
    Every argument is checked against the SAE's and the model's configs before the model
    loads."""
    from PIL import Image, UnidentifiedImageError

    from vlmsae.core.errors import UserError
    from vlmsae.data.images import to_rgb
    from vlmsae.sae import SAE
    from vlmsae.steer.checks import check_steer_request
    from vlmsae.steer.llava import generate, load_llava
    from vlmsae.steer.steering import steer_sae

    if len(alpha) not in (1, len(neuron)):
        raise typer.BadParameter(
            f"{len(neuron)} neurons but {len(alpha)} alphas: give one alpha, or one per neuron",
            param_hint="--alpha",
        )
    sae = SAE.load(sae_dir, device=device)
    target = check_steer_request(model, sae.cfg, neuron, layer, allow_mismatch=allow_mismatch)
    try:
        with Image.open(image) as im:
            picture = to_rgb(im)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"--image {image}: cannot read it as an image ({e})") from e
    block = target.block
    llava = load_llava(model, device=device)
    clamp = dict(zip(neuron, alpha * len(neuron) if len(alpha) == 1 else alpha, strict=True))
    base = generate(llava, [picture], prompt, max_new_tokens=max_new_tokens)[0]
    with steer_sae(llava.encoder, sae, block, clamp, mode=mode, pre_zero=pre_zero):
        steered = generate(llava, [picture], prompt, max_new_tokens=max_new_tokens)[0]
    typer.echo(f"without steering: {base}")
    typer.echo(f"with {clamp} at block {block}: {steered}")


@config_options(cfg=TOY_OPTIONS, ev=EVAL_OPTIONS)
def steer_eval(
    out: Path = typer.Option(Path("runs/steer-eval"), "--out", help="Output directory."),
    *,
    cfg: ConfigArgs[ToySteeringConfig],
    ev: ConfigArgs[SteerEvalConfig],
) -> None:
    """Insertion / suppression, SAE neurons vs DiffMean, on a toy world's LLaVA (ground-
    truth judge). Writes steering_table.{md,csv}, alpha_sweep.csv, examples.jsonl and
    summary.json. On real models use ``vlmsae.steer.compare.compare_steering``."""
    from vlmsae.steer.table import table_markdown
    from vlmsae.steer.toy import toyworld_steering
    from vlmsae.toyworld import llava_path

    n_val = cfg.values["n_val"] or max(4, cfg.values["n_test"] // 4)
    config = cfg.build(eval=ev.build(), n_val=n_val)  # an unknown world, n_targets out of range
    llava_path(config.models_dir, world=config.world)  # no model: one Error line, before work
    result = toyworld_steering(out, config)
    typer.echo(table_markdown(result.comparison.table))
    typer.echo(f"wrote {out}")
