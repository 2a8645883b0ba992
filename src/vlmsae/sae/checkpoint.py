"""SAE checkpoints: a directory with ``config.json`` and ``sae.safetensors``.

``sae.safetensors`` holds ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` and ``threshold`` where the architecture has one (BatchTopK: a scalar,
JumpReLU: ``[d_sae]``), always in the units of the raw activations (a trainer that
normalised its inputs folds the scale back in and records it as ``norm_factor``). A training
run adds its trainer state (weights in training units, optimizer moments, counters, RNG) in
``checkpoints/step-…/trainer_state.{safetensors,json}``, named by ``checkpoint.json``, so
loading an SAE never needs it — and nothing here is ever unpickled. ``config.json`` and
``trainer_state.json`` record the checksum of their ``.safetensors`` file (see
:mod:`vlmsae.core.checksum`); loading checks it before a weight is used.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file
from torch import Tensor

from vlmsae.core.checksum import CHECKSUMS, bytes_checksum, checksum_problem, file_checksum
from vlmsae.core.errors import CheckpointError, UserError
from vlmsae.core.io import atomic_write, read_json, write_json
from vlmsae.data.provenance import SOURCE_FIELDS, file_sha256
from vlmsae.sae.config import CONFIG_SOURCE_FIELDS, SAEConfig

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)
_warned: set[str] = set()  # files without checksums warned about in this process
SCHEMA = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "sae.safetensors"
STATE_TENSORS_FILE = "trainer_state.safetensors"
STATE_JSON_FILE = "trainer_state.json"
POINTER_FILE = "checkpoint.json"  # names the folder under checkpoints/ with the trainer state
CHECKPOINTS_DIR = "checkpoints"


# Tensors in the units of the input: scaled with it (see SAE.scale_biases_).
BIAS_NAMES = ("b_enc", "b_dec", "threshold")


def scale_biases_(tensors: dict[str, Tensor], scale: float, *, threshold: bool) -> None:
    """Multiply the biases in a state dict (and the threshold, where ``threshold``) in place."""
    for name in BIAS_NAMES:
        if name in tensors and (name != "threshold" or threshold):
            tensors[name].mul_(scale)


def config_dict(sae: SAE, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` content of an SAE: schema, versions, shape and provenance."""
    from vlmsae import __version__

    cfg: SAEConfig = sae.cfg
    threshold = None
    if cfg.sparsity == "batchtopk":
        threshold = float(sae.threshold)
    return {
        "schema": SCHEMA,
        "library": "vlmsae",
        "version": __version__,
        "architecture": cfg.arch,
        "sparsity": cfg.sparsity,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k if cfg.sparsity in ("topk", "batchtopk") else None,
        "group_sizes": list(cfg.group_sizes),
        "threshold": threshold,
        **{f: getattr(cfg, f) for f in CONFIG_SOURCE_FIELDS},
        "sae": cfg.to_dict(),
        **extra,
    }


def save_sae(sae: SAE, path: str | Path, *, norm_factor: float | None = None, **extra: Any) -> Path:
    """Write ``sae`` to directory ``path`` (created); ``extra`` goes into ``config.json``
    (e.g. ``train=TrainConfig.to_dict()``, ``converted_from=...``). Both files are
    written atomically; the weights first, so a config never points at missing weights.

    ``norm_factor``: ``sae`` was trained on activations divided by it; the files get its
    biases and thresholds multiplied by it (``sae`` itself is left as it is), so that the
    saved SAE applies to raw activations, and ``config.json`` records the factor."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone() for k, v in sae.state_dict().items()}
    threshold = config_dict(sae)["threshold"]
    if norm_factor is not None:
        scale_biases_(tensors, norm_factor, threshold=sae.has_threshold)
        threshold = None if threshold is None or threshold < 0 else threshold * norm_factor
        extra["norm_factor"] = float(norm_factor)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    data = save(tensors, metadata=_meta())
    extra[CHECKSUMS] = {WEIGHTS_FILE: bytes_checksum(data)}  # of the bytes meant, not read back
    atomic_write(path / WEIGHTS_FILE, lambda p: _write_bytes(p, data))
    write_json(path / CONFIG_FILE, {**config_dict(sae, **extra), "threshold": threshold})
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def verify_file(path: Path, expected: str | None, hint: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` matches its recorded checksum;
    ``expected`` None (written by an older vlmsae): warn once per file and go on."""
    if expected is None:
        if str(path) not in _warned:
            _warned.add(str(path))
            log.warning("%s has no checksum (written by an older vlmsae): not verified", path)
        return
    if problem := checksum_problem(path, expected):
        raise CheckpointError(f"{problem}; {hint}")


def load_weights(path: str | Path, config: dict[str, Any], *, device: str = "cpu") -> dict:
    """The tensors of ``sae.safetensors`` in checkpoint ``path``, after checking them against
    the checksum in ``config`` (its ``config.json``): a damaged or truncated file is a
    :class:`CheckpointError` naming it, before any weight is used."""
    weights_path = Path(path) / WEIGHTS_FILE
    if not weights_path.exists():
        raise CheckpointError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}")
    expected = (config.get(CHECKSUMS) or {}).get(WEIGHTS_FILE)
    verify_file(weights_path, expected, "restore it, or save or train the SAE again")
    try:
        return load_file(str(weights_path), device=device)
    except SafetensorError as e:  # damaged in a checkpoint without checksums
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file ({e}); it is truncated or "
            "damaged: restore it, or save or train the SAE again"
        ) from e


def _meta() -> dict[str, str]:
    from vlmsae import __version__

    return {"format": "pt", "library": "vlmsae", "version": __version__}


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory, with its schema checked."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(
            f"{path} is not an SAE checkpoint: no {CONFIG_FILE} (for a dictionary_learning "
            "ae.pt, run `vlmsae convert` first)"
        )
    try:
        config = read_json(config_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({e}); the file is damaged: restore it or "
            "save the SAE again"
        ) from e
    if not isinstance(config, dict) or not isinstance(config.get("sae"), dict):
        raise CheckpointError(
            f"{config_path} has no 'sae' section, so it is not a vlmsae SAE config (for a "
            "dictionary_learning checkpoint, run `vlmsae convert` on its ae.pt)"
        )
    if config.get("schema", 0) > SCHEMA:
        raise CheckpointError(
            f"{path} has checkpoint schema {config['schema']} (written by vlmsae "
            f"{config.get('version')}); this vlmsae reads up to {SCHEMA}: upgrade vlmsae"
        )
    return config


def describe_nonfinite(tensors: dict[str, torch.Tensor]) -> str:
    """``"W_enc: 3 NaN, b_dec: 1 Inf"`` for the tensors holding NaN or Inf, else ``""``."""
    parts = []
    for name, t in tensors.items():
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        counts = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
        parts.append(f"{name}: {' and '.join(counts)}")
    return ", ".join(parts)


def save_trainer_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Trainer state: tensors (weights, optimizer moments, counters, RNG) + JSON (step, config).

    One atomic unit: both files go into a fresh ``checkpoints/step-…`` folder, and then
    ``checkpoint.json`` is replaced in one rename to name it. A crash at any instant leaves
    ``checkpoint.json`` naming either the previous complete folder or the new one; older
    folders (and the debris of an interrupted write) are removed only after the switch."""
    path = Path(path)
    root = path / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(meta['step']):09d}-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        try:
            save_file(tensors, str(tmp / STATE_TENSORS_FILE), metadata={"step": str(meta["step"])})
        except SafetensorError as e:  # a full disk: the OS error is only in the message
            raise _safetensors_os_error(tmp / STATE_TENSORS_FILE, e) from e
        checksum = file_checksum(tmp / STATE_TENSORS_FILE)
        write_json(tmp / STATE_JSON_FILE, {**meta, CHECKSUMS: {STATE_TENSORS_FILE: checksum}})
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
        os.replace(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(path / POINTER_FILE, {"step": int(meta["step"]), "dir": f"{CHECKPOINTS_DIR}/{name}"})
    for old in root.iterdir():  # the previous checkpoint and any interrupted write
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for legacy in (STATE_TENSORS_FILE, STATE_JSON_FILE):  # the layout before checkpoints/
        (path / legacy).unlink(missing_ok=True)


def _safetensors_os_error(path: Path, error: SafetensorError) -> Exception:
    """The ``OSError`` inside a ``SafetensorError`` (``... (os error 28)``) as an
    :class:`~vlmsae.core.errors.OutputError` when the user can fix it, else ``error``."""
    import re

    from vlmsae.core.io import output_error

    found = re.search(r"(?:code: |os error )(\d+)", str(error))
    if found is None:
        return error
    code = int(found.group(1))
    converted = output_error(path, OSError(code, os.strerror(code)))
    return converted if isinstance(converted, UserError) else error


def has_trainer_state(path: str | Path) -> bool:
    """``path`` holds a resumable training run (a checkpoint was written)."""
    path = Path(path)
    return (path / POINTER_FILE).exists() or (path / STATE_JSON_FILE).exists()


def trainer_state_dir(path: str | Path) -> Path:
    """The folder holding the current trainer state of run ``path``."""
    path = Path(path)
    if (path / POINTER_FILE).exists():
        pointer = read_json(path / POINTER_FILE)
        state_dir = path / pointer["dir"]
        if not (state_dir / STATE_JSON_FILE).exists():
            raise CheckpointError(
                f"{path / POINTER_FILE} names {state_dir}, which is missing or incomplete; "
                "the run's checkpoint was removed by hand: restart without --resume"
            )
        return state_dir
    return path  # written by vlmsae before checkpoints/ existed: files at the top level


def load_trainer_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON of the trainer state of run ``path`` (see :func:`save_trainer_state`)."""
    from safetensors import safe_open

    state_dir = trainer_state_dir(path)
    meta = read_json(state_dir / STATE_JSON_FILE)
    tensors_path = state_dir / STATE_TENSORS_FILE
    expected = (meta.pop(CHECKSUMS, None) or {}).get(STATE_TENSORS_FILE)
    verify_file(tensors_path, expected, "restart without --resume")
    try:
        with safe_open(str(tensors_path), framework="pt") as f:
            if f.metadata().get("step") != str(meta["step"]):
                raise CheckpointError(
                    f"{state_dir}: trainer state files disagree on the step (an interrupted "
                    "write of a checkpoint made by an older vlmsae); restart without --resume"
                )
        return load_file(str(tensors_path)), meta
    except SafetensorError as e:  # damaged in a checkpoint without checksums
        raise CheckpointError(
            f"{tensors_path} is truncated or damaged ({e}); restart without --resume"
        ) from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sae_provenance(sae_dir: str | Path) -> dict[str, Any]:
    """Shape, source and weight hash of an SAE checkpoint directory (its ``config.json``).

    The source is the ``source`` block written by ``vlmsae train`` (model, revision, hook
    point, layer, tokens, dataset, images) where present, else the config's own fields.
    """
    config = read_config(sae_dir)
    prov = {k: config.get(k) for k in SOURCE_FIELDS if config.get(k) is not None}
    prov.update({k: v for k, v in (config.get("source") or {}).items() if v is not None})
    prov.update(sae=str(sae_dir), d_in=config.get("d_in"), d_sae=config.get("d_sae"))
    weights = Path(sae_dir) / WEIGHTS_FILE
    if weights.is_file():
        prov["sae_sha256"] = file_sha256(weights)
    return prov
