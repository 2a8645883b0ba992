"""CLI commands of the formats stage: ``vlmsae convert``, ``vlmsae export``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export")(export)


def convert(
    ae_path: Path = typer.Argument(..., help="dictionary_learning ae.pt file."),
    out: Path = typer.Option(..., "--out", help="Output SAE checkpoint directory."),
    arch: Literal["topk", "batchtopk"] | None = typer.Option(
        None, "--arch", help="Where the file cannot tell (see docs)."
    ),
    model: str = typer.Option(None, "--model", help="Source model, stored in config.json."),
    hookpoint: Literal["post_mlp_residual", "post_projection"] | None = typer.Option(
        None, "--hookpoint", help="Hook point the SAE was trained on."
    ),
    layer: int = typer.Option(None, "--layer", help="Layer of the hook point."),
    tokens: str = typer.Option(
        None, "--tokens", help="Token selection: cls | mean | all | random:N"
    ),
    push_to_hub: str = typer.Option(
        None, "--push-to-hub", help="Also upload the SAE to this hub repository (ORG/NAME)."
    ),
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something else (another SAE, a run)."
    ),
) -> None:
    """Convert a dictionary_learning checkpoint (the paper's code) to a vlmsae SAE."""
    from vlmsae.core.outputs import check_out_free, writing_output
    from vlmsae.formats.dictionary_learning import convert_dictionary_learning

    if arch is not None and arch not in ("topk", "batchtopk"):
        raise typer.BadParameter("only topk or batchtopk can be forced", param_hint="--arch")
    check_push(push_to_hub)
    owns, inputs = ("config.json", "sae.safetensors"), (ae_path,)
    check_out_free(out, "convert", owns=owns, inputs=inputs, overwrite=overwrite)
    sae = convert_dictionary_learning(
        ae_path, sparsity=arch, model=model, hookpoint=hookpoint, layer=layer, tokens=tokens
    )
    with writing_output(out, "convert", owns=owns, inputs=inputs, overwrite=overwrite,
                        meta={"artifact": "sae"}) as unit:  # fmt: skip
        unit.dirty = True
        sae.save(out, converted_from=str(ae_path))
        unit.add(*owns)
    typer.echo(f"{sae}\nwrote {out}")
    push(out, push_to_hub)


def check_push(repo_id: str | None) -> None:
    """Refuse a malformed --push-to-hub before hours of training, not after."""
    if repo_id:
        from vlmsae.formats.hub import check_repo_id

        check_repo_id(repo_id)


def push(folder: Path, repo_id: str | None) -> None:
    if repo_id:
        from vlmsae.formats.hub import push_to_hub

        typer.echo(f"pushed {folder} to {push_to_hub(folder, repo_id)}")


def export(
    sae: str = typer.Argument(
        ...,
        help="SAE checkpoint folder or hub id (ORG/NAME[/SUBFOLDER]); for neuronpedia the "
        "explorer site (`vlmsae explore --out SITE`).",
    ),
    fmt: str = typer.Option(..., "--format", help="saelens | dictionary_learning | neuronpedia"),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    overwrite: bool = typer.Option(
        False, help="Write into --out even where it holds something else (another SAE, a run)."
    ),
) -> None:
    """Write an SAE in SAELens's or dictionary_learning's format (their loaders read it), or
    an explorer site's neurons as Neuronpedia feature dashboards (batch-N.json)."""
    from vlmsae.formats.export import FORMATS, OTHER_FORMATS, export_output
    from vlmsae.sae.model import SAE

    if fmt in OTHER_FORMATS:  # registered by the room that reads their input
        typer.echo(OTHER_FORMATS[fmt].run(Path(sae), out))
        return
    if fmt not in FORMATS:
        known = (*FORMATS, *OTHER_FORMATS)
        raise typer.BadParameter(f"{fmt!r} is not one of {known}", param_hint="--format")
    model = SAE.load(sae)
    note = export_output(model, out, fmt, source=sae, overwrite=overwrite)
    if note:
        typer.echo(f"note: {note}")
    typer.echo(f"{model}\nwrote {out} ({fmt})")
