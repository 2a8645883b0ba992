"""Export a vlmsae SAE to another library's format: SAELens or dictionary_learning.

``export_sae(sae, out, fmt)`` writes the files and returns a one-line note where the
format cannot express something (the CLI prints it); where the other library would compute
something different, it refuses with a :class:`~vlmsae.core.errors.UserError` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from vlmsae.core.errors import UserError

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

FORMATS = ("saelens", "dictionary_learning")
FORMAT_FILES = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "dictionary_learning": ("ae.pt", "config.json"),
}
"""The files each format's export writes."""


def export_output(
    sae: SAE, out: str | Path, fmt: str, *, source: str | Path | None = None,
    overwrite: bool = False,
) -> str | None:  # fmt: skip
    """:func:`export_sae` as one output of ``vlmsae export`` (:mod:`vlmsae.core.outputs`):
    refuses an ``out`` that is the SAE's own folder ``source`` or holds something else
    (unless ``overwrite``), holds the folder's lock, and commits the files together."""
    from vlmsae.core.outputs import writing_output

    if fmt not in FORMAT_FILES:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    owns = tuple(sorted({f for files in FORMAT_FILES.values() for f in files}))
    local = getattr(sae, "local_dir", None)  # a hub SAE: its snapshot in the cache
    with writing_output(out, "export", owns=owns, inputs=(source, local), overwrite=overwrite,
                        meta={"artifact": fmt}) as unit:  # fmt: skip
        unit.dirty = True
        note = export_sae(sae, out, fmt)
        unit.add(*FORMAT_FILES[fmt])
    return note


class OtherExport(NamedTuple):
    """An export format whose input is not an SAE checkpoint, registered by the room that
    reads that input (the explorer registers ``neuronpedia``: formats cannot import it)."""

    source: str
    """What the command's positional argument must be, for its help and errors."""
    run: Callable[[Path, Path], str]
    """``run(source, out)`` writes the export and returns the line the command prints."""


OTHER_FORMATS: dict[str, OtherExport] = {}
"""Formats registered with :func:`register_format` (filled when the CLI is built)."""


def register_format(name: str, source: str, run: Callable[[Path, Path], str]) -> None:
    """Make ``vlmsae export SOURCE --format NAME --out DIR`` call ``run(SOURCE, DIR)``."""
    OTHER_FORMATS[name] = OtherExport(source, run)


def export_sae(sae: SAE, out: str | Path, fmt: str) -> str | None:
    """Write ``sae`` into folder ``out`` in format ``fmt`` (one of :data:`FORMATS`);
    returns a note on what the format cannot express, or None."""
    if fmt == "saelens":
        from vlmsae.formats.saelens import export_saelens

        return export_saelens(sae, out)
    if fmt == "dictionary_learning":
        from vlmsae.formats.dictionary_learning import export_dictionary_learning

        return export_dictionary_learning(sae, out)
    raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
