"""Multi-file outputs committed as one unit, and the rule that no command overwrites what a
user made.

Every command that writes a folder of several files (``score``, ``top-images``, ``label``,
``explore``, ``export``, ``convert``) writes it inside :func:`writing_output`:

1. it takes the folder's lock (:func:`vlmsae.core.lock.output_lock`) and checks the folder
   is free for it (:func:`check_out_free`);
2. it replaces ``output.json`` with ``{"complete": false, ...}``: from this instant on the
   folder reads as *being written*, whatever files of the old output are still there;
3. it writes its files (each one atomically, :func:`vlmsae.core.io.atomic_write`) and names
   them with :meth:`OutputUnit.add`;
4. it removes the files of the old output that the new one does not have, and replaces
   ``output.json`` last with ``{"complete": true, "files": {name: "xxh3_128:..."}}``.

A reader (:func:`read_output_bytes` and the helpers on it) checks each file it reads
against the manifest: after a kill at any instant, or a file of another output copied in
by hand, it sees the old output whole, the new one whole, or one ``Error:`` line naming
the file that does not belong. A folder written before manifests existed (no
``output.json``) still loads, with one warning.

The folder rule (:func:`check_out_free`): ``--out`` may be missing, empty, or hold only an
output of the *same* command (its ``output.json`` names the command; an older output with
no manifest: only names that command writes). Anything else -- another command's output,
a store, an SAE, files a user put there -- is refused unless ``overwrite``; an ``--out``
that is (or holds, or lies inside) one of the command's inputs is always refused, since
the command reads its input while it writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsae.core.checksum import bytes_checksum, file_checksum
from vlmsae.core.errors import UserError
from vlmsae.core.io import (
    TEMP_SUFFIX,
    atomic_write_text,
    read_json,
    remove_stale_temps,
    save_npy,
    write_json,
)
from vlmsae.core.lock import LOCK_FILE, output_lock

log = logging.getLogger(__name__)
MANIFEST = "output.json"
SCHEMA = 1
_WARNED: set[str] = set()  # folders already warned about (one warning per folder)


@dataclass
class OutputUnit:
    """The output being written: the files named so far (paths relative to ``dir``)."""

    dir: Path
    command: str
    active: bool = True
    """False on a ``torchrun`` rank other than 0: the rank computes but writes nothing."""
    files: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra fields recorded in the manifest (e.g. ``{"artifact": "scores"}``)."""
    dirty: bool = False
    """A file of the folder was replaced (set by :meth:`add`; a writer that writes files
    itself sets it before its first one)."""

    def add(self, *names: str | Path) -> None:
        """Name files (relative to :attr:`dir`, or absolute inside it) as part of the output."""
        self.dirty = True
        for name in names:
            rel = Path(name)
            if rel.is_absolute():
                rel = rel.relative_to(self.dir)
            text = rel.as_posix()
            if text not in self.files:
                self.files.append(text)

    def write_text(self, name: str, text: str) -> None:
        """Write ``dir / name`` (atomically; not on an inactive rank) and name it."""
        if self.active:
            atomic_write_text(self.dir / name, text)
            self.add(name)

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``dir / name`` (see :func:`~vlmsae.core.io.write_json`)."""
        if self.active:
            write_json(self.dir / name, obj)
            self.add(name)

    def save_npy(self, name: str, arr: Any) -> None:
        """Write a ``.npy`` file (no pickle) to ``dir / name``."""
        if self.active:
            save_npy(self.dir / name, arr)
            self.add(name)


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``output.json`` of ``out_dir`` (None when it has none)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except ValueError as e:
        raise UserError(f"{path} is damaged ({e}); write the output again") from None
    if not isinstance(manifest, dict) or "complete" not in manifest:
        raise UserError(f"{path} is not a vlmsae output manifest; write the output again")
    return manifest


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it (real paths)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or b in a.parents


def _own_entries(names: Iterable[str]) -> set[str]:
    """Top-level names of ``names`` (``data/index.js`` -> ``data``)."""
    return {Path(n).parts[0] for n in names if n}


def _check_inputs(out_dir: Path, inputs: Iterable[Any]) -> None:
    """Refuse an ``out_dir`` that is, holds or lies inside one of ``inputs``."""
    for src in (Path(str(p)) for p in inputs if p is not None):
        if src.exists() and (_inside(out_dir, src) or _inside(src, out_dir)):
            raise UserError(
                f"--out {out_dir} is the input {src} (or holds it, or lies inside "
                "it): the command reads it while it writes; choose another --out"
            )


def check_out_free(
    out_dir: Path,
    command: str,
    *,
    owns: Iterable[str] = (),
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
) -> None:
    """Refuse ``out_dir`` when it holds something other than an output of ``command``.

    Args:
        out_dir: the ``--out`` folder.
        command: the command (``"score"``); an ``output.json`` naming it is its own.
        owns: top-level names the command writes (for a folder with no manifest: an older
            output of the command holds only these).
        inputs: the command's input paths: ``--out`` may not be one, hold one or lie in one.
        overwrite: ``--overwrite``: write into a folder of something else anyway.
    """
    _check_inputs(out_dir, inputs)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; choose a folder")
    entries = {
        p.name
        for p in out_dir.iterdir()
        if p.name != LOCK_FILE and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))
    }
    if not entries:
        return
    manifest = read_manifest(out_dir)
    allowed = set(owns) | {MANIFEST}
    if manifest is not None:
        if manifest.get("command") == command:
            allowed |= _own_entries(_listed(manifest))
        else:
            what = f"the output of `vlmsae {manifest.get('command')}`"
            _refuse_or_warn(out_dir, command, what, overwrite)
            return
    foreign = sorted(entries - allowed)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        shown = ", ".join(foreign[:3]) + more
        _refuse_or_warn(out_dir, command, f"files `vlmsae {command}` does not write ({shown})",
                        overwrite)  # fmt: skip


def check_not_other_output(out_dir: Path, command: str, inputs: Iterable[Any] = ()) -> None:
    """Refuse an ``out_dir`` holding another command's output (an ``output.json`` naming
    it) or an activation store (``manifest.json``), or one of ``inputs``: for commands with
    their own rules for what they find there (``train`` and ``--resume``)."""
    _check_inputs(out_dir, inputs)
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None and manifest.get("command") != command:
        what = f"the output of `vlmsae {manifest.get('command')}`"
    elif (out_dir / "manifest.json").is_file():
        what = "an activation store"
    else:
        return
    raise UserError(f"--out {out_dir} holds {what}; `vlmsae {command}` would write over it: "
                    "choose another --out")  # fmt: skip


def _refuse_or_warn(out_dir: Path, command: str, what: str, overwrite: bool) -> None:
    if overwrite:
        log.warning("--out %s holds %s: writing over it (--overwrite)", out_dir, what)
        return
    raise UserError(
        f"--out {out_dir} holds {what}; `vlmsae {command}` writes only into an empty folder "
        "or its own earlier output: choose another --out, or pass --overwrite"
    )


@contextmanager
def writing_output(
    out_dir: str | Path,
    command: str,
    *,
    owns: Iterable[str] = (),
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> Iterator[OutputUnit]:
    """Write the output folder ``out_dir`` of ``command`` as one unit (see the module doc).

    The block writes its files and names them with :meth:`OutputUnit.add`; the manifest
    that commits them is written when the block ends without an exception (after one, the
    folder stays marked incomplete and readers refuse it). Under ``torchrun`` only rank 0
    locks and writes (the unit is inactive on the other ranks).

    Raises:
        UserError: ``out_dir`` holds something else (:func:`check_out_free`), or another
            process writes it.
    """
    out = Path(out_dir)
    from vlmsae.core import dist

    if dist.init_from_env() and not dist.is_main():
        yield OutputUnit(out, command, active=False, meta=dict(meta or {}))
        return
    check_out_free(out, command, owns=owns, inputs=inputs, overwrite=overwrite)
    with output_lock(out, f"vlmsae {command}"):
        check_out_free(out, command, owns=owns, inputs=inputs, overwrite=overwrite)  # locked
        remove_stale_temps(out)
        old = read_manifest(out)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        # the old output's files stay listed, so that a rerun after a kill here may remove them
        previous = sorted(_listed(old)) if old and old.get("command") == command else []
        write_json(out / MANIFEST, {"schema": SCHEMA, "command": command, "complete": False,
                                    "started": started, "previous_files": previous})  # fmt: skip
        unit = OutputUnit(out, command, meta=dict(meta or {}))
        try:
            yield unit
        except BaseException:
            if not unit.dirty:  # nothing of the old output was replaced: it is whole again
                _restore(out, old)
            raise
        _commit(unit, old, started)


def _restore(out: Path, old: dict[str, Any] | None) -> None:
    """Put the old manifest back (or none, as before) after a writer failed before its
    first file; best effort (the disk may be full): the folder stays marked incomplete."""
    try:
        if old is None:
            (out / MANIFEST).unlink(missing_ok=True)
        else:
            write_json(out / MANIFEST, old)
    except OSError as e:
        log.warning("%s stays marked incomplete: %s", out, e)


def _commit(unit: OutputUnit, old: dict[str, Any] | None, started: str) -> None:
    """Checksum the unit's files, drop the old output's leftovers, write the manifest."""
    files = {name: file_checksum(unit.dir / name) for name in unit.files}
    if old is not None and old.get("command") == unit.command:
        for name in _listed(old):
            stale = unit.dir / name
            if name not in files and stale.is_file() and _inside(stale, unit.dir):
                stale.unlink()
    manifest = {"schema": SCHEMA, "command": unit.command, "complete": True,
                "started": started, **unit.meta, "files": files}  # fmt: skip
    write_json(unit.dir / MANIFEST, manifest)


def _listed(manifest: dict[str, Any]) -> set[str]:
    """The files a manifest names: those of a complete output, or those a writer that was
    interrupted had taken over from the output before it."""
    return set(manifest.get("files") or {}) | set(manifest.get("previous_files") or [])


def clear_output(out_dir: Path, names: Iterable[str]) -> None:
    """Remove the files and folders ``names`` of ``out_dir`` (a command's own, before it
    writes them again: a site's shard folder)."""
    for name in names:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _legacy_warning(out_dir: Path) -> None:
    key = os.path.realpath(out_dir)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(
            "%s has no %s (written by an older vlmsae): cannot check that its files belong "
            "to one output", out_dir, MANIFEST,
        )  # fmt: skip


def checked_manifest(out_dir: str | Path, what: str = "") -> dict[str, Any] | None:
    """The committed manifest of ``out_dir`` (None, with one warning, for an older output
    without one).

    Raises:
        UserError: the output is incomplete (a writer was interrupted, or is writing now).
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    if manifest is None:
        _legacy_warning(out)
        return None
    if not manifest.get("complete"):
        cmd = manifest.get("command", "vlmsae")
        raise UserError(
            f"{what or out} is incomplete: `vlmsae {cmd}` was interrupted while writing it "
            f"(or is writing it now, since {manifest.get('started', '?')}); run it again"
        )
    return manifest


def read_output_bytes(
    out_dir: str | Path, name: str, manifest: dict[str, Any] | None = None, what: str = ""
) -> bytes:
    """The bytes of ``out_dir / name``, checked against the output's manifest (read now
    unless given: pass one manifest for every file of one read, so that they are one
    output's).

    Raises:
        UserError: the output is incomplete, or the file is missing or not the one the
            output's writer wrote (copied from another output, changed, damaged).
    """
    out = Path(out_dir)
    if manifest is None:
        manifest = checked_manifest(out, what)
    path = out / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} not found: {what or out} is not a whole output") from None
    if manifest is None:
        return data
    expected = (manifest.get("files") or {}).get(name)
    if expected is None:
        raise UserError(
            f"{path} does not belong to the output in {out}: its {MANIFEST} "
            f"(`vlmsae {manifest.get('command')}`) does not list it; write the output again"
        )
    if bytes_checksum(data) != expected:
        raise UserError(
            f"{path} does not belong to the output in {out}: its bytes are not those "
            f"`vlmsae {manifest.get('command')}` wrote (copied from another output, changed "
            "or damaged); write the output again"
        )
    return data


def read_output_npy(out_dir: str | Path, name: str, manifest: dict[str, Any] | None = None,
                    what: str = "") -> Any:  # fmt: skip
    """A ``.npy`` file of an output, checked (:func:`read_output_bytes`), without pickle."""
    import io

    import numpy as np

    data = read_output_bytes(out_dir, name, manifest, what)
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_output_json(out_dir: str | Path, name: str, manifest: dict[str, Any] | None = None,
                     what: str = "") -> Any:  # fmt: skip
    """A JSON file of an output, checked (:func:`read_output_bytes`)."""
    import json

    return json.loads(read_output_bytes(out_dir, name, manifest, what).decode("utf-8"))
