"""CLI commands of the data stage: ``vlmsae inspect``, ``vlmsae verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.command("verify")(verify)


def verify(
    path: Path = typer.Argument(
        ..., help="A store, an SAE or training-run folder, or a folder of them."
    ),
) -> None:
    """Check every shard and weight file against the checksum recorded when it was written:
    one line per problem, then a verdict; exit 0 when all is whole, 2 when not."""
    from vlmsae.data.verify import verify_path

    report = verify_path(path)
    for problem in report.problems:
        typer.echo(problem)
    n = len(report.artifacts)
    where = f"{report.n_files} files in {n} artifact{'s' * (n != 1)}"
    if report.ok:
        typer.echo(f"OK: {where} match their checksums")
        return
    typer.echo(f"NOT WHOLE: {len(report.problems)} problem(s) in {where}")
    raise typer.Exit(2)


def inspect(
    path: Path = typer.Argument(..., help="A store directory (activations, embeddings or codes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Summarise a store's manifest: model, hook point, rows, width, dtype, skipped images."""
    from vlmsae.data.store import MANIFEST, StoreError

    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise typer.BadParameter(f"{path} has no {MANIFEST}: not a vlmsae store", param_hint="PATH")
    manifest = json.loads(manifest_path.read_text())
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    try:
        lines = _summary_lines(manifest, _checked(path, manifest))
    except KeyError as e:
        raise StoreError(f"{manifest_path} lacks the field {e}") from e
    typer.echo("\n".join(lines))


def _checked(path: Path, manifest: dict) -> str:
    """Check a complete store's files (an ``Error:`` naming the first damaged one)."""
    from vlmsae.data.integrity import NO_CHECKSUMS, has_checksums
    from vlmsae.data.store import ActivationStore

    if not manifest.get("complete"):
        return ""
    store = ActivationStore(path)  # headers and sizes: a truncated file is an error
    if not has_checksums(manifest):
        return f", not verified ({NO_CHECKSUMS})"
    store.verify()
    return ", checksums verified"


def _data_line(m: dict) -> str:
    """Where the images came from: the folder, or the dataset / shards (``data_source``)."""
    src = m.get("data_source") or {}
    split = f", split {m['split']}" if m.get("split") else ""
    if not src:
        return f"{m.get('dataset_root', '-')}{split}"
    files = src.get("shards") or src.get("parquet") or src.get("files") or []
    size = sum(int(f.get("bytes", 0)) for f in files)
    what = src.get("name") or m.get("dataset_root", "-")
    sha = f", fingerprint {src['fingerprint']}" if src.get("fingerprint") else ""
    return f"{src.get('kind')} {what}{split} ({len(files)} files, {size / 1e6:,.1f} MB{sha})"


def _summary_lines(m: dict, checked: str = "") -> list[str]:
    fields = [
        ("kind", m["kind"]),
        ("complete", f"yes{checked}" if m["complete"] else "NO (interrupted; rerun with --resume)"),
        ("model", m.get("model", "-")),
        ("hook point", m.get("hookpoint", "-")),
        ("layer", m.get("layer", "-")),
        ("tokens", m.get("tokens", "-")),
        ("rows", f"{m['n_rows']:,}"),
        ("width d", m["d"]),
        ("dtype", m["dtype"]),
        ("shards", len(m["shards"])),
        ("data", _data_line(m)),
        ("images", m.get("n_images", "-")),
        ("skipped images", m.get("n_skipped", 0)),
    ]
    lines = [f"{k:>15}: {v}" for k, v in fields]
    for s in m.get("skipped", [])[:10]:
        lines.append(f"{'':>17}{s['path']}: {s['reason']}")
    if m.get("n_skipped", 0) > 10:
        lines.append(f"{'':>17}... and {m['n_skipped'] - 10} more (--json lists all)")
    return lines
