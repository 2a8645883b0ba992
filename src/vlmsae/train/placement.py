"""Where the SAEs of a sweep train under ``torchrun``: on every rank, or spread over the ranks.

``replicate``: every rank holds every SAE and trains it data parallel on its slice of each
global batch (as :func:`~vlmsae.train.run.train_sae` does). ``spread``: the SAEs are
partitioned over the ranks, balanced by parameter count; each rank reads whole global
batches and trains its SAEs exactly as one process would (bit for bit), writing their run
directories itself. ``auto`` spreads when the SAEs' training state (weights, gradients and
Adam's two moments: 16 bytes per parameter) would not fit the memory budget of one rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.train.config import TrainConfig

log = logging.getLogger(__name__)
PLACEMENTS = ("auto", "replicate", "spread")
BYTES_PER_PARAM = 16
"""float32 weight, gradient and Adam's ``exp_avg`` and ``exp_avg_sq``."""
CUDA_FRACTION = 0.75
"""Share of a GPU's memory the SAEs' state may take (the rest: one step's buffers)."""
CPU_FRACTION = 0.5
"""Share of the node's RAM the SAEs' state of all local ranks may take."""


def n_params(cfg: TrainConfig) -> int:
    """Trainable parameters of the SAE of ``cfg``: ``W_enc``, ``W_dec``, ``b_enc``,
    ``b_dec``."""
    d_in, d_sae = cfg.sae.d_in, cfg.sae.d_sae
    return 2 * d_in * d_sae + d_sae + d_in


def training_bytes(cfg: TrainConfig) -> int:
    """Memory the training state of one SAE takes (weights, gradients, Adam moments)."""
    return BYTES_PER_PARAM * n_params(cfg)


def rank_budget_bytes(device: str) -> int:
    """The memory one rank may give the SAEs' training state: a share of the GPU's memory
    (``cuda``), or of the node's RAM divided among the node's ranks (``cpu``)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return int(CUDA_FRACTION * torch.cuda.get_device_properties(index).total_memory)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size()))
    return int(CPU_FRACTION * ram / max(1, local_ranks))


def partition(cfgs: Sequence[TrainConfig], n_ranks: int) -> list[list[int]]:
    """The indices of ``cfgs`` each rank trains: largest SAE first, each to the rank with the
    fewest parameters so far (ties: the lower rank), so loads differ by at most one SAE.
    Deterministic: every rank, and a resumed run with as many ranks, gets the same."""
    order = sorted(range(len(cfgs)), key=lambda i: (-n_params(cfgs[i]), i))
    loads, parts = [0] * n_ranks, [[] for _ in range(n_ranks)]
    for i in order:
        r = min(range(n_ranks), key=lambda j: (loads[j], j))
        loads[r] += n_params(cfgs[i])
        parts[r].append(i)
    return [sorted(p) for p in parts]


def check_placement(placement: str) -> str:
    """``placement`` if it names a placement.

    Raises:
        UserError: it does not.
    """
    if placement not in PLACEMENTS:
        raise UserError(
            f"unknown sweep placement {placement!r}; give one of {', '.join(PLACEMENTS)} "
            "(--sweep-placement, or placement in the [sweep] table of the sweep file)"
        )
    return placement


def choose_placement(
    cfgs: Sequence[TrainConfig],
    placement: str = "auto",
    *,
    n_ranks: int | None = None,
    budget_bytes: int | None = None,
) -> str:
    """``"replicate"`` or ``"spread"`` for the sweep ``cfgs`` on ``n_ranks`` ranks (default:
    the world). ``auto`` spreads when the training state of all SAEs exceeds
    ``budget_bytes`` (default :func:`rank_budget_bytes` of the sweep's device) and there are
    several ranks; a forced placement is returned as given."""
    n_ranks = dist.world_size() if n_ranks is None else n_ranks
    if check_placement(placement) != "auto":
        return placement
    if n_ranks <= 1:
        return "replicate"  # one process: nothing to spread
    need = sum(training_bytes(c) for c in cfgs)
    budget = rank_budget_bytes(cfgs[0].device) if budget_bytes is None else budget_bytes
    choice = "spread" if need > budget else "replicate"
    log.info(
        "sweep of %d SAEs: %.3g GiB of training state, %.3g GiB per rank: %s",
        len(cfgs),
        need / 2**30,
        budget / 2**30,
        "spread over the ranks" if choice == "spread" else "every SAE on every rank",
    )
    if choice == "spread":
        worst = max(sum(training_bytes(cfgs[i]) for i in p) for p in partition(cfgs, n_ranks))
        if worst > budget:
            log.warning(
                "spread over %d ranks, one rank still holds %.3g GiB of SAE state (budget "
                "%.3g GiB): use more ranks, or train the sweep in parts",
                n_ranks,
                worst / 2**30,
                budget / 2**30,
            )
    return choice


def owned(cfgs: Sequence[TrainConfig], placement: str) -> list[int]:
    """The indices of ``cfgs`` this rank trains: every one (``replicate``, or one process),
    or its part of :func:`partition` (``spread``)."""
    if placement != "spread":
        return list(range(len(cfgs)))
    mine = partition(cfgs, dist.world_size())[dist.rank()]
    log.info("rank %d trains SAEs %s of the sweep", dist.rank(), mine)
    return mine


@contextmanager
def each_rank(what: str, spread: bool, group: Any = None) -> Iterator[None]:
    """Spread: run the block on each rank as one process would (whole batches, no
    collectives: :func:`vlmsae.core.dist.alone`), then fail every rank if it failed on any
    (agreeing in ``group``). Replicated: the block as it is (data parallel, in step)."""
    if not spread:
        yield
        return
    with dist.together(what, group), dist.alone():
        yield
