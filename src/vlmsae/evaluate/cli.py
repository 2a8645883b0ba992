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
_SUBSTITUTION_MISSING = (
    "--model/--data run the substitution evaluation (vlmsae.evaluate.substitution), which "
    "this build of vlmsae does not have; leave them out to evaluate concepts only"
)


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
) -> None:
    """Concept detection (best single latent per concept: F1, AUROC), k-sparse probing (SAE
    vs raw neurons vs untrained SAE) and, with --model and --data, the fraction of the model's
    performance recovered with the SAE spliced in: summary.json, concepts.csv, latents.csv,
    summary.txt and figures."""
    from vlmsae.core import dist
    from vlmsae.core.cli_errors import user_errors
    from vlmsae.core.io import atomic_write_text, write_json
    from vlmsae.core.lock import output_lock
    from vlmsae.data.store import ActivationStore
    from vlmsae.evaluate import report
    from vlmsae.evaluate.label_sources import load_labels
    from vlmsae.evaluate.run import evaluate_sae_concepts
    from vlmsae.metrics.fit import check_top_inputs, with_neuron_count
    from vlmsae.sae import SAE

    if dist.init_from_env() and not dist.is_main():
        return  # under torchrun rank 0 evaluates alone: the work is not split over ranks
    if (model is None) != (data is None):
        raise UserError("--model and --data go together (the substitution evaluation needs both)")
    substitution = None
    if model is not None:
        try:
            from vlmsae.evaluate import substitution
        except ImportError as e:
            raise UserError(_SUBSTITUTION_MISSING) from e
    with user_errors(ValueError):
        cfg = EvaluateConfig(aggregate=aggregate, chunk_rows=chunk_rows, threshold=threshold,
                             baselines=baselines, untrained_seed=seed,
                             probing=ProbingConfig(k_values=_ks(k), test_fraction=test_fraction,
                                                   seed=seed))  # fmt: skip
    store = ActivationStore(activations)
    provenance = check_top_inputs(store, sae, allow_mismatch=allow_mismatch)
    concept_labels = load_labels(store, labels)
    model_sae = SAE.load(sae).eval()
    with output_lock(out, "vlmsae evaluate"):
        ev = evaluate_sae_concepts(model_sae, store, concept_labels, cfg)
        summary = {"artifact": "evaluate", "sae": str(sae), "activations": str(activations),
                   **with_neuron_count(provenance, model_sae.cfg.d_sae),
                   "concepts": ev.summary()}  # fmt: skip
        if substitution is not None:
            result = substitution.evaluate_substitution(
                model_sae, model, data, batch_size=batch_size, limit=limit, device=device,
                prompt=prompt, k_nn=k_nn,
            )  # fmt: skip
            summary["substitution"] = result.to_dict()
            substitution.plot_recovered(result, out / "recovered.png")
        report.write_concepts_csv(out / "concepts.csv", ev)
        report.write_latents_csv(out / "latents.csv", ev)
        report.f1_histogram(out / "f1_hist.png", ev)
        report.probing_figure(out / "probing.png", ev)
        lines = report.summary_lines(summary)
        if substitution is not None:
            lines += list(result.summary_lines())
        atomic_write_text(out / "summary.txt", "\n".join(lines) + "\n")
        write_json(out / "summary.json", summary)
    for line in lines:
        typer.echo(line)
    typer.echo(f"→ {out}")
