"""Many SAEs from one pass over the data: ``train_sweep(data, [TrainConfig, ...], out_dirs)``.

Every SAE of a sweep trains on the same batches (one ``batch_size`` and ``seed``): each batch
is read once and handed to every SAE in turn, so reading the store is paid once per step,
not once per SAE. Each SAE's run directory is exactly what :func:`train_sae` writes, and a
sweep's SAE equals the one :func:`train_sae` trains from the same config (bit for bit on
CPU). Under ``torchrun`` every SAE trains data parallel, as :func:`train_sae` does.

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
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import tomllib
from tqdm.auto import tqdm

from vlmsae import dist
from vlmsae._io import remove_stale_temps
from vlmsae._lock import output_lock
from vlmsae.errors import UserError
from vlmsae.sae.config import SAEConfig, TrainConfig
from vlmsae.sae.data import Data, make_source, shard_source
from vlmsae.sae.model import SAE
from vlmsae.sae.train import _advance, _check_width, _conclude, _prepare

log = logging.getLogger(__name__)
PAPER_GROUP_FRACTIONS = (0.0625, 0.125, 0.25, 0.5625)
SHARED = ("batch_size", "seed")  # one data order for the whole sweep


def train_sweep(
    data: Data,
    cfgs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path] | None = None,
    *,
    val: Data | None = None,
    resume: bool = False,
) -> list[SAE]:
    """Train one SAE per config on the same batches, reading each batch once.

    Args:
        data: as for :func:`~vlmsae.sae.train.train_sae`.
        cfgs: one config per SAE; all with the same ``batch_size`` and ``seed``.
        out_dirs: one run directory per config (``None``: keep everything in memory).
        val: held-out data evaluated at every log point of every SAE.
        resume: continue every run of an interrupted sweep (all at the same step).

    Returns:
        The trained SAEs, in the order of ``cfgs``.
    """
    dist.init_from_env()
    _check_sweep(cfgs, out_dirs)
    source = shard_source(make_source(data))
    cfgs = [_check_width(c, source) for c in cfgs]
    paths = [Path(p) for p in out_dirs] if out_dirs is not None else [None] * len(cfgs)
    with ExitStack() as stack:
        for path in paths:
            if path is not None:
                lock = lambda p=path: output_lock(p, "vlmsae train --sweep")  # noqa: E731
                stack.enter_context(dist.on_main(lock, f"locking {path}"))
                if dist.is_main():
                    remove_stale_temps(path)
        norm_factors: dict[Any, float] = {}  # one estimate of the scale for the whole sweep
        runs = [
            _prepare(source, c, p, val, resume, None, norm_factors, bar=False)
            for c, p in zip(cfgs, paths, strict=True)
        ]
        _run_together(runs, source)
        saes = [_conclude(r) for r in runs]
        dist.barrier()
    return saes


def _check_sweep(cfgs: Sequence[TrainConfig], out_dirs: Sequence[Any] | None) -> None:
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


def _run_together(runs: list, source: Any) -> None:
    """Read each batch once and step every SAE that has steps left on it."""
    starts = sorted({r.state.step for r in runs})
    if len(starts) > 1:
        raise UserError(
            f"cannot resume the sweep: its SAEs stopped at different steps {starts}; resume "
            "them one by one with vlmsae train --resume"
        )
    first, total = runs[0].cfg, max(r.cfg.steps for r in runs)
    batches = source.batches(first.batch_size, first.seed, starts[0])
    show = first.progress and dist.is_main()
    bar = tqdm(total=total, initial=starts[0], disable=not show, desc=f"train {len(runs)} saes")
    try:
        while any(r.state.step < r.cfg.steps for r in runs):
            x_BD = next(batches, None)
            if x_BD is None:
                log.warning("the data ran out after %d steps (of %d)", bar.n, total)
                break
            for run in runs:
                if run.state.step < run.cfg.steps:
                    _advance(run, x_BD)
            bar.update(1)
    finally:
        bar.close()
        for run in runs:
            run.bar.close()


# -- sweep files ----------------------------------------------------------------------
def load_sweep(path: str | Path, base: TrainConfig) -> dict[str, TrainConfig]:
    """The configs of a sweep file (module docstring), by run name; keys not given in the
    file come from ``base``.

    Raises:
        UserError: the file is not TOML, names an unknown setting, or gives none.
    """
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read the sweep file {path}: {e}; give a TOML file") from e
    entries = [dict(e) for e in spec.get("sae", [])]
    grid = spec.get("grid", {})
    if grid:
        keys = list(grid)
        lists = [v if isinstance(v, list) else [v] for v in grid.values()]
        entries += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    unknown = set(spec) - {"sae", "grid"}
    if unknown or not entries:
        raise UserError(
            f"{path}: expected a [grid] table and / or [[sae]] entries"
            + (f", found {sorted(unknown)}" if unknown else ", found none")
        )
    cfgs: dict[str, TrainConfig] = {}
    for entry in entries:
        name, cfg = _entry_config(entry, base, path)
        if name in cfgs:
            raise UserError(f"{path}: two SAEs are named {name!r}; give one a distinct name")
        cfgs[name] = cfg
    return cfgs


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
    data: Data, base: TrainConfig, sweep_path: str | Path, out_dir: str | Path, **kwargs: Any
) -> dict[str, Path]:
    """Train the sweep of ``sweep_path`` into ``out_dir/<name>``; returns the run dirs."""
    cfgs = load_sweep(sweep_path, base)
    dirs = {name: Path(out_dir) / name for name in cfgs}
    train_sweep(data, list(cfgs.values()), list(dirs.values()), **kwargs)
    return dirs
