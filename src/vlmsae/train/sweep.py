"""Many SAEs from one pass over the data: ``train_sweep(data, [TrainConfig, ...], out_dirs)``.

Every SAE of a sweep trains on the same batches (one ``batch_size`` and ``seed``): each batch
is read once and handed to every SAE in turn, so reading the store is paid once per step,
not once per SAE. Each SAE's run directory is exactly what :func:`train_sae` writes, and a
sweep's SAE equals the one :func:`train_sae` trains from the same config (bit for bit on
CPU). Under ``torchrun`` every SAE trains data parallel, as :func:`train_sae` does, or the
SAEs are spread over the ranks when they do not fit one (:mod:`vlmsae.train.placement`).

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
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import tomllib
from tqdm.auto import tqdm

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.core.io import remove_stale_temps
from vlmsae.core.lock import output_lock
from vlmsae.sae.config import SAEConfig
from vlmsae.sae.model import SAE
from vlmsae.train.config import TrainConfig
from vlmsae.train.data import Data, make_source, shard_source
from vlmsae.train.placement import check_placement, choose_placement, partition
from vlmsae.train.run import _advance, _check_width, _conclude, _prepare

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
    paths = [Path(p) for p in out_dirs] if out_dirs is not None else [None] * len(cfgs)
    mine = list(range(len(cfgs)))
    if placement == "spread":
        mine = partition(cfgs, dist.world_size())[dist.rank()]
        log.info("rank %d trains SAEs %s of the sweep", dist.rank(), mine)
    spread = placement == "spread" and dist.is_distributed()
    saes: list[SAE | None] = [None] * len(cfgs)
    with ExitStack() as stack:
        with dist.together("locking the run directories of the sweep"):
            for i in mine:  # one writer per run directory: its owner (rank 0 replicated)
                if paths[i] is not None and (spread or dist.is_main()):
                    stack.enter_context(output_lock(paths[i], "vlmsae train --sweep"))
                    remove_stale_temps(paths[i])  # debris of a killed writer (we hold the lock)
        with _each_rank("preparing the SAEs of the sweep", spread):
            source = shard_source(make_source(data))
            own = [_check_width(cfgs[i], source) for i in mine]
            norm_factors: dict[Any, float] = {}  # one estimate of the scale per sweep
            runs = [
                _prepare(source, c, paths[i], val, resume, None, norm_factors, bar=False)
                for c, i in zip(own, mine, strict=True)
            ]
        show = dist.is_main()  # one progress bar per job
        # spread, a rank may finish hours before another: it waits without a timeout
        patient = stack.enter_context(dist.patient_group()) if spread else None
        with _each_rank("training the SAEs of the sweep", spread, patient):
            _run_together(runs, source, show)
            for i, run in zip(mine, runs, strict=True):
                saes[i] = _conclude(run)
        dist.barrier()
    return saes


@contextmanager
def _each_rank(what: str, spread: bool, group: Any = None) -> Iterator[None]:
    """Spread: run the block on each rank as one process would (whole batches, no
    collectives: :func:`vlmsae.core.dist.alone`), then fail every rank if it failed on any
    (agreeing in ``group``). Replicated: the block as it is (data parallel, in step)."""
    if not spread:
        yield
        return
    with dist.together(what, group), dist.alone():
        yield


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


def _run_together(runs: list, source: Any, show: bool) -> None:
    """Read each batch once and step every SAE that has steps left on it: batch ``i`` (a
    pure function of ``seed`` and ``i``) goes to the runs that stand at step ``i``, so runs
    resumed from different checkpoints each continue exactly."""
    try:
        todo = [r for r in runs if r.state.step < r.cfg.steps]
        if not todo:
            return
        first, total = todo[0].cfg, max(r.cfg.steps for r in todo)
        step = min(r.state.step for r in todo)
        batches = source.batches(first.batch_size, first.seed, step)
        desc = f"train {len(runs)} saes"
        with tqdm(
            total=total, initial=step, disable=not (show and first.progress), desc=desc
        ) as bar:
            while any(r.state.step < r.cfg.steps for r in todo):
                x_BD = next(batches, None)
                if x_BD is None:
                    log.warning("the data ran out after %d steps (of %d)", step, total)
                    break
                for run in todo:
                    if run.state.step == step and run.state.step < run.cfg.steps:
                        _advance(run, x_BD)
                step += 1
                bar.update(1)
    finally:
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
