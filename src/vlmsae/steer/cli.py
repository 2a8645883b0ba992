"""CLI of the steering stage: ``vlmsae steer`` and ``vlmsae steer-eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vlmsae.core.cli_options import progress_options


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
) -> None:
    """Print LLaVA's answer without and with SAE neurons clamped in its vision tower."""
    from PIL import Image

    from vlmsae.core.errors import UserError
    from vlmsae.data.images import to_rgb
    from vlmsae.sae import SAE
    from vlmsae.steer.llava import generate, load_llava
    from vlmsae.steer.steering import steer_sae

    if len(alpha) not in (1, len(neuron)):
        raise typer.BadParameter(
            f"{len(neuron)} neurons but {len(alpha)} alphas: give one alpha, or one per neuron",
            param_hint="--alpha",
        )
    sae = SAE.load(sae_dir, device=device)
    block = layer if layer is not None else sae.cfg.layer
    if block is None:
        raise typer.BadParameter(
            "the SAE config names no layer; pass --layer", param_hint="--layer"
        )
    llava = load_llava(model, device=device)
    if sae.cfg.d_in != llava.encoder.d_model:
        raise UserError(
            f"--sae {sae_dir} reads {sae.cfg.d_in}-wide activations but the vision tower of "
            f"{model} is {llava.encoder.d_model} wide; use an SAE trained on this LLaVA's tower"
        )
    with Image.open(image) as im:
        picture = to_rgb(im)
    clamp = dict(zip(neuron, alpha * len(neuron) if len(alpha) == 1 else alpha, strict=True))
    base = generate(llava, [picture], prompt, max_new_tokens=max_new_tokens)[0]
    with steer_sae(llava.encoder, sae, block, clamp, mode=mode, pre_zero=pre_zero):
        steered = generate(llava, [picture], prompt, max_new_tokens=max_new_tokens)[0]
    typer.echo(f"without steering: {base}")
    typer.echo(f"with {clamp} at block {block}: {steered}")


def steer_eval(
    out: Path = typer.Option(Path("runs/steer-eval"), "--out", help="Output directory."),
    n_train: int = typer.Option(1024, "--n-train", help="Images for the SAE, neurons, DiffMean."),
    n_test: int = typer.Option(96, "--n-test", help="Test images per protocol."),
    steps: int = typer.Option(1500, "--steps", help="Steering SAE training steps."),
    seed: int = typer.Option(0, "--seed"),
    world: str = typer.Option("shapes", "--world", help="Toy world: shapes or emoji."),
    n_targets: int = typer.Option(
        8, "--n-targets", help="Emoji world: target emoji (one per Unicode group in turn)."
    ),
    models_dir: Path = typer.Option(
        None, "--models-dir", help="Toy models folder (with llava/) [the world's shipped ones]."
    ),
) -> None:
    """Insertion / suppression, SAE neurons vs DiffMean, on a toy world's LLaVA (ground-
    truth judge). Writes steering_table.{md,csv}, alpha_sweep.csv, examples.jsonl and
    summary.json. On real models use ``vlmsae.steer.compare.compare_steering``."""
    from vlmsae.core.cli_errors import user_errors
    from vlmsae.steer.table import table_markdown
    from vlmsae.steer.toy import ToySteeringConfig, toyworld_steering
    from vlmsae.toyworld import llava_path

    with user_errors():  # an unknown world, n_targets out of range
        cfg = ToySteeringConfig(
            world=world,
            n_targets=n_targets,
            models_dir=None if models_dir is None else str(models_dir),
            n_train=n_train,
            n_val=max(4, n_test // 4),
            n_test=n_test,
            steps=steps,
            seed=seed,
        )
    llava_path(cfg.models_dir, world=cfg.world)  # no model: one Error line, before any work
    result = toyworld_steering(out, cfg)
    typer.echo(table_markdown(result.comparison.table))
    typer.echo(f"wrote {out}")
