"""CLI command of the training stage: ``vlmsae train``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, get_args

import typer

from vlmsae.core.cli_errors import user_errors
from vlmsae.core.cli_options import progress_options
from vlmsae.core.errors import UserError
from vlmsae.core.numbers import fmt, pct
from vlmsae.formats.cli import check_push, push

Arch = Literal["batchtopk", "matryoshka", "topk", "relu", "jumprelu"]
ARCHS = get_args(Arch)
PAPER_GROUP_FRACTIONS = (0.0625, 0.125, 0.25, 0.5625)
LOG_TO_HELP = (
    "tensorboard | wandb (repeatable): also send each log point's metrics there "
    "(tensorboard: RUN/tensorboard). Needs the optional extra of that name. metrics.jsonl "
    "is always written."
)


def register(app: typer.Typer) -> None:
    app.command("train")(progress_options(train))


def _parse_fractions(
    text: str | None, option: str = "--group-fractions"
) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError as e:
        raise typer.BadParameter(
            f"{text!r}: give numbers separated by spaces or commas, e.g. '0.0625 0.125 0.5 0.3125'",
            param_hint=option,
        ) from e


def train(
    activations: Path = typer.Option(..., "--activations", help="Activation store to train on."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoint, metrics)."),
    val: Path = typer.Option(None, "--val", help="Held-out activation store."),
    arch: Arch = typer.Option("batchtopk", "--arch", help="SAE architecture."),
    expansion: int = typer.Option(16, "--expansion", help="d_sae = expansion × d_in."),
    k: int = typer.Option(20, "--k", help="Active latents per example (TopK / BatchTopK)."),
    steps: int = typer.Option(110_000, "--steps"),
    batch_size: int = typer.Option(4096, "--batch-size"),
    group_fractions: str = typer.Option(
        None,
        "--group-fractions",
        help="Matryoshka group fractions, e.g. '0.0625 0.125 0.25 0.5625' (the default for "
        "--arch matryoshka).",
    ),
    lr: float = typer.Option(None, "--lr", help="Default: 2e-4 / sqrt(d_sae / 2^14)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    dtype: Literal["float32", "bfloat16"] = typer.Option(
        "float32", "--dtype", help="Compute dtype of the encoder product (bfloat16: autocast)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    warmup_steps: int = typer.Option(1000, "--warmup-steps"),
    threshold_start_step: int = typer.Option(1000, "--threshold-start-step"),
    aux_alpha: float = typer.Option(0.03, "--aux-alpha", help="AuxK weight (0 disables)."),
    normalize: bool = typer.Option(
        True,
        "--normalize/--no-normalize",
        help="Train on inputs scaled to unit mean squared norm, folded back into the saved "
        "weights (the paper's code); --no-normalize trains on raw activations.",
    ),
    decay_start: float = typer.Option(
        None,
        "--decay-start",
        help="Decay the lr linearly to 0 after this fraction of --steps (default: no decay, "
        "as the paper's scripts).",
    ),
    group_weights: str = typer.Option(
        None,
        "--group-weights",
        help="Matryoshka prefix loss weights w_g, loss Σ w_g L_g / G (default 1/G each, the "
        "paper's Σ L_g / G²).",
    ),
    dead_after: int = typer.Option(10_000_000, "--dead-after", help="Examples without firing."),
    l1_coeff: float = typer.Option(1e-3, "--l1-coeff", help="L1 penalty (relu)."),
    l0_coeff: float = typer.Option(1e-3, "--l0-coeff", help="L0 penalty (jumprelu)."),
    log_every: int = typer.Option(100, "--log-every"),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
    log_to: list[str] = typer.Option([], "--log-to", help=LOG_TO_HELP),
    push_to_hub: str = typer.Option(
        None, "--push-to-hub", help="Also upload the SAE to this hub repository (ORG/NAME)."
    ),
    sweep: Path = typer.Option(
        None,
        "--sweep",
        help="TOML file of several SAEs ([grid] and / or [[sae]] tables) trained together on "
        "one read of the data into --out/<name>; other options are their defaults.",
    ),
    sweep_placement: str = typer.Option(
        None,
        "--sweep-placement",
        help="Under torchrun: auto (spread when the SAEs do not fit one rank's memory), "
        "replicate (every SAE data parallel on every rank) or spread (each SAE on one rank). "
        "Default: placement in the sweep file's [sweep] table, else auto.",
    ),
) -> None:
    """Train an SAE on an activation store; writes a checkpoint, metrics.jsonl, summary.json."""
    from vlmsae.data.provenance import check_same_source, store_provenance
    from vlmsae.data.store import ActivationStore
    from vlmsae.sae.config import SAEConfig
    from vlmsae.train.config import TrainConfig
    from vlmsae.train.run import train_sae
    from vlmsae.train.sinks import open_sinks

    if arch not in ARCHS:
        raise typer.BadParameter(f"{arch!r} is not one of {ARCHS}", param_hint="--arch")
    check_push(push_to_hub)
    if sweep_placement is not None:
        from vlmsae.train.placement import check_placement

        if sweep is None:
            raise UserError("--sweep-placement places the SAEs of a --sweep; give --sweep too")
        check_placement(sweep_placement)
    fractions = _parse_fractions(group_fractions)
    if arch == "matryoshka" and fractions is None:
        fractions = PAPER_GROUP_FRACTIONS
    store = ActivationStore(activations)
    if store.is_sparse:
        raise UserError(
            f"{activations} holds SAE codes (kind=codes); train on an activation store "
            "(a layer_L folder written by `vlmsae cache`)"
        )
    source = store_provenance(store)
    if val is not None:
        val_source = store_provenance(ActivationStore(val))
        check_same_source({**source, "d_in": store.d}, val_source, f"--activations {activations}",
                          f"--val {val}")  # fmt: skip
    with user_errors(ValueError):  # config validation (--k, --steps, --group-fractions ...)
        sae_cfg = SAEConfig(
            d_in=store.d,
            expansion=expansion,
            sparsity="batchtopk" if arch == "matryoshka" else arch,
            k=k,
            group_fractions=fractions,
            group_weights=_parse_fractions(group_weights, "--group-weights"),
        )
        cfg = TrainConfig(
            sae=sae_cfg,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            dtype=dtype,
            device=device,
            warmup_steps=warmup_steps,
            threshold_start_step=threshold_start_step,
            aux_alpha=aux_alpha,
            normalize_activations=normalize,
            decay_start=decay_start,
            dead_after=dead_after,
            l1_coeff=l1_coeff,
            l0_coeff=l0_coeff,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
        )
        if batch_size > len(store):
            raise UserError(
                f"--batch-size {batch_size} is larger than the {len(store)} rows of "
                f"{activations}; lower it"
            )
        if sweep is not None:
            from vlmsae.train.sweep import train_sweep_file

            for name, run_dir in train_sweep_file(
                store, cfg, sweep, out, val=val, resume=resume, placement=sweep_placement
            ).items():
                typer.echo(f"wrote {run_dir} ({name})")
            return
        with open_sinks(log_to, out, cfg) as on_step:
            sae = train_sae(store, cfg, out, val=val, resume=resume, on_step=on_step)
    summary = json.loads((out / "summary.json").read_text())
    final = summary.get("val") or summary["final"]
    typer.echo(
        f"{sae}\nwrote {out} — R² {fmt(final.get('r2'))}, L0 {fmt(final.get('l0'))}, "
        f"dead {pct(final.get('dead_fraction', 0))}"
    )
    push(out, push_to_hub)
