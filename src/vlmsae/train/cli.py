"""CLI command of the training stage: ``vlmsae train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import typer

from vlmsae.core.cli_errors import user_errors
from vlmsae.core.cli_options import progress_options
from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options
from vlmsae.core.errors import UserError
from vlmsae.core.numbers import fmt, pct
from vlmsae.formats.cli import check_push, push
from vlmsae.sae.config import DTYPES, PAPER_GROUP_FRACTIONS, SAEConfig
from vlmsae.train.config import TrainConfig

Arch = Literal["batchtopk", "matryoshka", "topk", "relu", "jumprelu"]
ARCHS = get_args(Arch)
LOG_TO_HELP = (
    "tensorboard | wandb (repeatable): also send each log point's metrics there "
    "(tensorboard: RUN/tensorboard). Needs the optional extra of that name. metrics.jsonl "
    "is always written."
)
SAE_OPTIONS = ConfigOptions(
    SAEConfig,
    # d_in is the store's width, sparsity comes from --arch; the source fields from the store
    skip=("d_in", "sparsity", "model", "hookpoint", "layer", "tokens"),
    defaults={"expansion": 16},  # the paper's; SAEConfig needs d_sae or expansion
    help={
        "group_fractions": "Matryoshka group fractions of d_sae (sum to 1), e.g. '"
        + " ".join(map(str, PAPER_GROUP_FRACTIONS))
        + "' (the paper's, the default for --arch matryoshka).",
        "group_sizes": "Matryoshka group sizes (sum to d_sae), instead of --group-fractions.",
    },
)
TRAIN_OPTIONS = ConfigOptions(
    TrainConfig,
    skip=("sae", "progress"),  # progress: --progress / --quiet
    flags={"normalize_activations": "--normalize/--no-normalize"},
    choices={"dtype": DTYPES},
)


def register(app: typer.Typer) -> None:
    app.command("train")(progress_options(train))


@config_options(sae=SAE_OPTIONS, cfg=TRAIN_OPTIONS)
def train(
    activations: Path = typer.Option(..., "--activations", help="Activation store to train on."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoint, metrics)."),
    val: Path = typer.Option(None, "--val", help="Held-out activation store."),
    arch: Arch = typer.Option(
        "batchtopk",
        "--arch",
        help="SAE architecture: the sparsity, or matryoshka (batchtopk with groups).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="With --resume: continue even if --activations is not the store the run was "
        "trained on (cached again since, with other images or rows): a warning, not an error.",
    ),
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
    *,
    sae: ConfigArgs[SAEConfig],
    cfg: ConfigArgs[TrainConfig],
) -> None:
    """Train an SAE on an activation store; writes a checkpoint, metrics.jsonl, summary.json."""
    from vlmsae.data.provenance import check_same_source, store_provenance
    from vlmsae.data.store import ActivationStore
    from vlmsae.train.run import train_sae
    from vlmsae.train.sinks import open_sinks

    check_push(push_to_hub)
    if sweep_placement is not None:
        from vlmsae.train.placement import check_placement

        if sweep is None:
            raise UserError("--sweep-placement places the SAEs of a --sweep; give --sweep too")
        check_placement(sweep_placement)
    from vlmsae.core.outputs import check_not_other_output

    check_not_other_output(out, "train", inputs=(activations, val))
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
    fixed = {"d_in": store.d, "sparsity": "batchtopk" if arch == "matryoshka" else arch}
    if "d_sae" in sae.given and "expansion" not in sae.given:
        fixed["expansion"] = None  # --d-sae alone replaces the default --expansion
    if arch == "matryoshka" and not (sae.values["group_fractions"] or sae.values["group_sizes"]):
        fixed["group_fractions"] = PAPER_GROUP_FRACTIONS
    sae_cfg = sae.build(**fixed)
    train_cfg = cfg.build(sae=sae_cfg)
    if train_cfg.batch_size > len(store):
        raise UserError(
            f"--batch-size {train_cfg.batch_size} is larger than the {len(store)} rows of "
            f"{activations}; lower it"
        )
    if sweep is not None:
        from vlmsae.train.sweep import train_sweep_file

        with user_errors(ValueError):
            runs = train_sweep_file(
                store, train_cfg, sweep, out, val=val, resume=resume, placement=sweep_placement
            )
        for name, run_dir in runs.items():
            typer.echo(f"wrote {run_dir} ({name})")
        return
    with user_errors(ValueError), open_sinks(log_to, out, train_cfg) as on_step:
        model = train_sae(store, train_cfg, out, val=val, resume=resume, on_step=on_step,
                          allow_mismatch=allow_mismatch)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    final = summary.get("val") or summary["final"]
    typer.echo(
        f"{model}\nwrote {out} — R² {fmt(final.get('r2'))} (median per row "
        f"{fmt(final.get('row_r2_median'))}), L0 {fmt(final.get('l0'))}, "
        f"dead {pct(final.get('dead_fraction', 0))}"
    )
    push(out, push_to_hub)
