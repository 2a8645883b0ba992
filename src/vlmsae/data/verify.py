"""Check every file of stores, SAE checkpoints and training runs against its checksum
(``vlmsae verify``), without computing anything from them.

An artifact is a folder holding a ``manifest.json`` (a store; its rank parts under
``ranks/`` are covered by its manifest) or an SAE ``config.json`` (an SAE checkpoint or a
training run, with its trainer state under ``checkpoints/``). A folder that is neither is
searched for artifacts below it (a sweep, a folder of stores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from vlmsae.core.checksum import CHECKSUMS, checksum_problem
from vlmsae.core.errors import StoreError, UserError
from vlmsae.core.io import read_json
from vlmsae.data.format import MANIFEST
from vlmsae.data.integrity import NO_CHECKSUMS, data_files, has_checksums, shape_problems

SAE_CONFIG = "config.json"
SAE_POINTER = "checkpoint.json"  # names the trainer-state folder of a run
STATE_JSON = "trainer_state.json"


@dataclass
class VerifyReport:
    """What :func:`verify_path` found."""

    artifacts: list[str] = field(default_factory=list)
    """Folders checked (stores, SAE checkpoints, training runs)."""
    n_files: int = 0
    """Files checked against a checksum."""
    problems: list[str] = field(default_factory=list)
    """One line per damaged, missing or unverifiable file."""

    @property
    def ok(self) -> bool:
        """Every file of every artifact matches its checksum."""
        return not self.problems and bool(self.artifacts)


def verify_path(path: str | Path) -> VerifyReport:
    """Check every file under ``path`` (a store, an SAE checkpoint or run folder, or a
    folder of them) against the checksums recorded when it was written. Artifacts written
    by an older vlmsae (no checksums) are reported as unverifiable; their ``.npy`` files
    are still checked for truncation."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give a store, an SAE or a run folder")
    report = VerifyReport()
    for folder in _artifacts(path):
        report.artifacts.append(str(folder))
        if (folder / MANIFEST).exists():
            _verify_store(folder, report)
        else:
            _verify_sae(folder, report)
    if not report.artifacts:
        raise UserError(f"{path} holds no store ({MANIFEST}) and no SAE ({SAE_CONFIG})")
    return report


def _artifacts(path: Path) -> list[Path]:
    if (path / MANIFEST).exists() or _is_sae(path):
        return [path]
    found = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += _artifacts(sub)
    return found


def _is_sae(folder: Path) -> bool:
    config = _json(folder / SAE_CONFIG)
    return isinstance(config, dict) and isinstance(config.get("sae"), dict)


def _json(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _check(report: VerifyReport, folder: Path, checksums: dict[str, str], files: list[str]):
    for name in files:
        report.n_files += 1
        expected = checksums.get(name)
        if expected is None:
            report.problems.append(f"{folder / name} has no checksum")
        elif problem := checksum_problem(folder / name, expected):
            report.problems.append(problem)


def _verify_store(folder: Path, report: VerifyReport) -> None:
    manifest = _json(folder / MANIFEST)
    if not isinstance(manifest, dict) or "shards" not in manifest:
        report.problems.append(f"{folder / MANIFEST} is damaged (not a store manifest)")
        return
    if not manifest.get("complete"):
        report.problems.append(f"{folder} is incomplete (an interrupted run; --resume it)")
    n_rows = sum(int(s["rows"]) for s in manifest["shards"])
    try:
        shapes = shape_problems(folder, manifest, n_rows)
    except StoreError as e:
        shapes = [str(e)]
    report.problems += [f"{folder}: {p}" for p in shapes]
    if not has_checksums(manifest):
        report.problems.append(f"{folder}: not verified ({NO_CHECKSUMS})")
        return
    files = data_files(folder, manifest)
    extra = [f for f in manifest[CHECKSUMS] if f not in files]  # e.g. rank parts' rows.npy
    said = [f for f in files if any(p.startswith(f"{Path(f).name} ") for p in shapes)]
    _check(report, folder, manifest[CHECKSUMS], [f for f in files + extra if f not in said])


def _verify_sae(folder: Path, report: VerifyReport) -> None:
    units = [(folder, SAE_CONFIG, "sae.safetensors")]
    pointer = _json(folder / SAE_POINTER)
    if isinstance(pointer, dict) and "dir" in pointer:
        units.append((folder / pointer["dir"], STATE_JSON, "trainer_state.safetensors"))
    for unit, json_name, weights in units:
        meta = _json(unit / json_name)
        if not isinstance(meta, dict):
            report.problems.append(f"{unit / json_name} is missing or damaged")
        elif not isinstance(meta.get(CHECKSUMS), dict):
            report.problems.append(_unverified_safetensors(unit / weights))
        else:
            _check(report, unit, meta[CHECKSUMS], [weights])


def _unverified_safetensors(path: Path) -> str:
    """What can be said of a weights file without a checksum: readable or not."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        return f"{path} is truncated or damaged ({e}; it has no checksum to compare)"
    return f"{path}: not verified ({NO_CHECKSUMS})"
