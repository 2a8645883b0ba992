"""Many SAEs from one pass over the data: ``train_sweep(data, [TrainConfig, ...], out_dirs)``.

Every SAE of a sweep trains on the same batches (one ``batch_size`` and ``seed``): each batch
is read once and handed to every SAE in turn, so reading the store is paid once per step,
not once per SAE. :func:`train_sae` is the sweep of one SAE (both run
:func:`~vlmsae.train.run.train_runs`), so each SAE's run directory is exactly what
``train_sae`` writes and its weights are the ones ``train_sae`` trains from the same config
(bit for bit on CPU). This module adds what only a sweep has: checks that its SAEs can share
the batches, the choice of placement, and sweep files. Under ``torchrun`` every SAE trains
data parallel, as ``train_sae`` does, or the SAEs are spread over the ranks when they do
not fit one (:mod:`vlmsae.train.placement`).

A sweep file (``vlmsae train --sweep sweep.toml``) lists the SAEs; every key not given falls
back to the command's options::

    [grid]                       # every combination
    arch = ["batchtopk", "matryoshka"]
    expansion = [1, 4, 16]

    [[sae]]                      # and / or single SAEs
    name = "wide"                # run directory OUT/wide (default: OUT/<arch>-x<expansion>-k<k>)
    arch = "topk"
    expansion = 64
    k = 32

    [sweep]                      # options of the whole sweep (optional)
    placement = "spread"         # under torchrun: auto | replicate | spread (--sweep-placement)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import tomllib

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.sae.config import PAPER_GROUP_FRACTIONS, SAEConfig
from vlmsae.sae.model import SAE
from vlmsae.train.config import TrainConfig
from vlmsae.train.data import Data
from vlmsae.train.placement import check_placement, choose_placement
from vlmsae.train.run import train_runs

log = logging.getLogger(__name__)
SHARED = ("batch_size", "seed")  # one data order for the whole sweep


def train_sweep(
    data: Data,
    cfgs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path] | None = None,
    *,
    val: Data | None = None,
    resume: bool = False,
    placement: str = "auto",
) -> list[SAE | None]:
    """Train one SAE per config on the same batches, reading each batch once.

    Args:
        data: as for :func:`~vlmsae.train.run.train_sae`.
        cfgs: one config per SAE; all with the same ``batch_size`` and ``seed``.
        out_dirs: one run directory per config (``None``: keep everything in memory).
        val: held-out data evaluated at every log point of every SAE.
        resume: continue every run of an interrupted sweep (runs that stopped at different
            steps too: each takes the batches from its own step on).
        placement: under ``torchrun``, ``"replicate"`` (every SAE data parallel on every
            rank), ``"spread"`` (the SAEs partitioned over the ranks, each trained whole by
            one rank) or ``"auto"`` (spread when they would not fit one rank's memory); see
            :mod:`vlmsae.train.placement`. Nothing changes in one process.

    Returns:
        The trained SAEs, in the order of ``cfgs``; spread over ranks, each rank's list
        holds only the SAEs it trained (``None`` for the others: load them from their run
        directories).
    """
    dist.init_from_env()
    _check_sweep(cfgs, out_dirs)
    check_placement(placement)  # on every rank: rank 0 alone decides (one log line, one choice)
    placement = dist.broadcast_object(choose_placement(cfgs, placement) if dist.is_main() else None)
    dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    return train_runs(data, cfgs, dirs, val=val, resume=resume, placement=placement)


def _check_sweep(cfgs: Sequence[TrainConfig], out_dirs: Sequence[str | Path] | None) -> None:
    if not cfgs:
        raise UserError("a sweep needs at least one SAE config")
    for name in SHARED:
        values = sorted({getattr(c, name) for c in cfgs})
        if len(values) > 1:
            raise UserError(
                f"the SAEs of a sweep read the same batches, but their {name}s differ "
                f"({values}); give them one {name}, or train them separately"
            )
    if out_dirs is not None:
        if len(out_dirs) != len(cfgs):
            raise ValueError(f"{len(cfgs)} configs but {len(out_dirs)} output directories")
        resolved = [Path(p).resolve() for p in out_dirs]
        if len(set(resolved)) != len(resolved):
            raise UserError("two SAEs of the sweep have the same run directory; name them apart")


# -- sweep files ----------------------------------------------------------------------
def load_sweep(path: str | Path, base: TrainConfig) -> dict[str, TrainConfig]:
    """The configs of a sweep file (module docstring), by run name; keys not given in the
    file come from ``base``.

    Raises:
        UserError: the file is not TOML, names an unknown setting, or gives none.
    """
    path = Path(path)
    spec = _read_sweep_file(path)
    entries = [dict(e) for e in spec.get("sae", [])]
    grid = spec.get("grid", {})
    if grid:
        keys = list(grid)
        lists = [v if isinstance(v, list) else [v] for v in grid.values()]
        entries += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    unknown = set(spec) - {"sae", "grid", "sweep"}
    if unknown or not entries:
        raise UserError(
            f"{path}: expected a [grid] table and / or [[sae]] entries (and an optional "
            "[sweep] table of options)"
            + (f", found {sorted(unknown)}" if unknown else ", found none")
        )
    cfgs: dict[str, TrainConfig] = {}
    for entry in entries:
        name, cfg = _entry_config(entry, base, path)
        if name in cfgs:
            raise UserError(f"{path}: two SAEs are named {name!r}; give one a distinct name")
        cfgs[name] = cfg
    return cfgs


def _read_sweep_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read the sweep file {path}: {e}; give a TOML file") from e


def sweep_file_options(path: str | Path) -> dict[str, Any]:
    """The ``[sweep]`` table of a sweep file: options of the whole sweep (``placement``).

    Raises:
        UserError: the table names an unknown option or an unknown placement.
    """
    path = Path(path)
    options = dict(_read_sweep_file(path).get("sweep", {}))
    unknown = set(options) - {"placement"}
    if unknown:
        raise UserError(
            f"{path}: unknown option(s) {sorted(unknown)} in [sweep]; it takes placement "
            "(auto, replicate or spread)"
        )
    if "placement" in options:
        check_placement(options["placement"])
    return options


def _entry_config(entry: dict[str, Any], base: TrainConfig, path: Path) -> tuple[str, TrainConfig]:
    entry = dict(entry)
    name = entry.pop("name", None)
    arch = entry.pop("arch", base.sae.arch)
    sae_names = {f.name for f in fields(SAEConfig)} - {"d_in", "d_sae", "group_sizes"}
    train_names = {f.name for f in fields(TrainConfig)} - {"sae", *SHARED}
    bad = set(entry) - sae_names - train_names
    if bad:
        raise UserError(
            f"{path}: unknown or not per-SAE setting(s) {sorted(bad)}; per SAE give name, "
            "arch, or fields of SAEConfig / TrainConfig (expansion, k, group_fractions, lr, "
            "steps, aux_alpha, ...); batch_size and seed are the sweep's: give them on the "
            "command line"
        )
    sae_fields = {k: v for k, v in base.sae.to_dict().items() if k not in ("d_sae", "group_sizes")}
    if arch == "matryoshka":
        sae_fields.update(sparsity="batchtopk")
        sae_fields["group_fractions"] = sae_fields["group_fractions"] or PAPER_GROUP_FRACTIONS
    else:
        sae_fields.update(sparsity=arch, group_fractions=None, group_weights=None)
    sae_fields.update({k: v for k, v in entry.items() if k in sae_names})
    try:
        sae = SAEConfig.from_dict(sae_fields)
        cfg = replace(base, sae=sae, **{k: v for k, v in entry.items() if k in train_names})
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: SAE {name or entry}: {e}") from e
    return name or f"{arch}-x{sae.d_sae // sae.d_in}-k{sae.k}", cfg


def train_sweep_file(
    data: Data,
    base: TrainConfig,
    sweep_path: str | Path,
    out_dir: str | Path,
    *,
    placement: str | None = None,
    **kwargs: Any,
) -> dict[str, Path]:
    """Train the sweep of ``sweep_path`` into ``out_dir/<name>``; returns the run dirs.
    ``placement`` (default: the file's ``[sweep] placement``, else ``"auto"``): see
    :func:`train_sweep`."""
    cfgs = load_sweep(sweep_path, base)
    if placement is None:
        placement = sweep_file_options(sweep_path).get("placement", "auto")
    dirs = {name: Path(out_dir) / name for name in cfgs}
    train_sweep(data, list(cfgs.values()), list(dirs.values()), placement=placement, **kwargs)
    return dirs
