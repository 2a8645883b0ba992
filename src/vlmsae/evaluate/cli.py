"""``vlmsae evaluate``: an SAE against concept labels (detection, sparse probing) and, with
``--model`` and ``--data``, spliced into its model (substitution). Heavy imports happen
inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from vlmsae.core.cli_options import progress_options
from vlmsae.core.errors import UserError
from vlmsae.evaluate.config import EvaluateConfig, ProbingConfig

_E, _P = EvaluateConfig(), ProbingConfig()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(progress_options(evaluate_cmd))


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError as e:
        raise UserError(f"--k {text!r}: expected integers separated by commas (1,2,5,20)") from e
    if not ks or min(ks) < 1:
        raise UserError(f"--k {text!r}: expected positive integers, e.g. 1,2,5,20")
    return ks


def evaluate_cmd(
    sae: Path = typer.Option(..., help="SAE checkpoint directory."),
    activations: Path = typer.Option(..., help="Activation store of the SAE's hook point."),
    out: Path = typer.Option(..., help="Output directory."),
    labels: str | None = typer.Option(
        None,
        help="toy (the toy world's truth), an image folder (ImageFolder classes, iNaturalist "
        "taxonomy levels, CUB classes + attributes), a Hugging Face / Parquet / WebDataset "
        "source (every ClassLabel column a set), or a CSV (path/index column + concept "
        "columns). Default: the store's own dataset.",
    ),
    model: str | None = typer.Option(None, help="Model to splice the SAE into (substitution)."),
    data: str | None = typer.Option(
        None,
        help="Images for the substitution evaluation: a folder, hf:ORG/NAME, a save_to_disk "
        "folder, 'DIR/*.parquet' or WebDataset shards (docs: data-sources).",
    ),
    aggregate: Literal["max", "mean"] = typer.Option(_E.aggregate, help="Several rows per image."),
    chunk_rows: int = typer.Option(_E.chunk_rows, help="Store rows read at a time."),
    threshold: float = typer.Option(_E.threshold, help="F1 at which a concept counts detected."),
    k: str = typer.Option(",".join(map(str, _P.k_values)), "--k", help="Latents per probe."),
    test_fraction: float = typer.Option(_P.test_fraction, help="Images held out for probes."),
    seed: int = typer.Option(_P.seed, help="Seed of the split and of the untrained SAE."),
    baselines: bool = typer.Option(
        _E.baselines, "--baselines/--no-baselines", help="Also raw neurons and an untrained SAE."
    ),
    allow_mismatch: bool = typer.Option(
        False, help="Apply the SAE to a store of another source (warns)."
    ),
    batch_size: int = typer.Option(32, help="Substitution: images per forward pass."),
    limit: int | None = typer.Option(None, help="Substitution: at most this many images."),
    device: str = typer.Option("cpu", help="Substitution: device of the model."),
    prompt: str | None = typer.Option(None, help="Substitution: prompt of a multimodal LLM."),
    k_nn: int = typer.Option(5, "--k-nn", help="Substitution: neighbours of the k-NN probe."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into an --out that holds something else."
    ),
) -> None:
    """Concept detection (best single latent per concept: F1, AUROC), k-sparse probing (SAE
    vs raw neurons vs untrained SAE) and, with --model and --data, the fraction of the model's
    performance recovered with the SAE spliced in: summary.json, concepts.csv, latents.csv,
    summary.txt and figures."""
    from vlmsae.core import dist
    from vlmsae.core.cli_errors import user_errors
    from vlmsae.evaluate.write import write_evaluation

    if dist.init_from_env() and not dist.is_main():
        return  # under torchrun rank 0 evaluates alone: the work is not split over ranks
    with user_errors(ValueError):
        cfg = EvaluateConfig(aggregate=aggregate, chunk_rows=chunk_rows, threshold=threshold,
                             baselines=baselines, untrained_seed=seed,
                             probing=ProbingConfig(k_values=_ks(k), test_fraction=test_fraction,
                                                   seed=seed))  # fmt: skip
    lines = write_evaluation(
        sae, activations, out, cfg, labels=labels, model=model, data=data,
        substitution_args=dict(batch_size=batch_size, limit=limit, device=device,
                               prompt=prompt, k_nn=k_nn),
        allow_mismatch=allow_mismatch, overwrite=overwrite,
    )  # fmt: skip
    for line in lines:
        typer.echo(line)
    typer.echo(f"→ {out}")
