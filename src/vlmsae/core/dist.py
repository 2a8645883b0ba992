"""Several processes (``torchrun``): rank, world size, shards, and collectives.

Everything here is a no-op in one process, so library code calls it unconditionally and
stays single-process code with a few reduction points (DESIGN.md: no rank logic threaded
through every function). :func:`init_from_env` joins the process group that ``torchrun``
describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``):
gloo for CPU tensors, NCCL for CUDA ones. Every collective has a timeout
(``VLMSAE_DIST_TIMEOUT`` seconds, default 1800), so a rank that died never hangs the others
forever.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from vlmsae.core.errors import RankFailed

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)
TIMEOUT_ENV = "VLMSAE_DIST_TIMEOUT"
_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}
_ALONE = [0]  # depth of nested `alone()` blocks in this process
PATIENT_TIMEOUT_S = 30 * 24 * 3600.0


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join the process group of a ``torchrun`` launch (idempotent).

    Returns ``True`` when this process is one of several. In a plain ``python`` run
    (``WORLD_SIZE`` unset or 1) nothing happens and every helper here is a no-op.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as tdist

    if not tdist.is_available():
        return False
    if not tdist.is_initialized():
        seconds = timeout_s if timeout_s is not None else float(os.environ.get(TIMEOUT_ENV, 1800))
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        tdist.init_process_group(backend, timeout=timedelta(seconds=seconds))
        log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)
    return is_distributed()


def _tdist() -> Any:
    """``torch.distributed`` if this process imported it (no process group without it:
    code that never touched torch stays torch-free)."""
    return sys.modules.get("torch.distributed")


def is_distributed() -> bool:
    """This process is one of several in an initialised process group (and not inside
    :func:`alone`)."""
    tdist = _tdist()
    return (
        _ALONE[0] == 0
        and tdist is not None
        and tdist.is_available()
        and tdist.is_initialized()
        and tdist.get_world_size() > 1
    )


@contextmanager
def alone():
    """Inside the block this process works as if it were the only one: every helper here is
    a no-op, ``rank() == 0``, ``world_size() == 1``, ``is_main()``. For work that each rank
    does on its own (a sweep whose SAEs are spread over the ranks: each rank trains its
    SAEs as one process would, on whole batches); the process group stays joined."""
    _ALONE[0] += 1
    try:
        yield
    finally:
        _ALONE[0] -= 1


def rank() -> int:
    """This process's index, 0 in one process."""
    return _tdist().get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes, 1 in one process."""
    return _tdist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes shared files (manifests, checkpoints, summaries)."""
    return rank() == 0


def shard(n: int, part: int | None = None, parts: int | None = None) -> range:
    """The contiguous share ``range(lo, hi)`` of ``range(n)`` owned by rank ``part`` of
    ``parts`` (default: this rank of the world); shares differ in size by at most one and
    concatenate, in rank order, to ``range(n)``."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    return range(n * part // parts, n * (part + 1) // parts)


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        _tdist().barrier()


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """``t`` reduced over ranks (``sum``, ``min`` or ``max``), in place; ``t`` itself in
    one process (no copy, no arithmetic: single-process results stay bit-identical)."""
    if not is_distributed():
        return t
    buf = t if t.is_contiguous() else t.contiguous()
    tdist = _tdist()
    tdist.all_reduce(buf, op=getattr(tdist.ReduceOp, _OPS[op]))
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_array(arr: Any, op: str = "sum") -> Any:
    """Reduce a contiguous NumPy array over ranks, in place (no-op in one process)."""
    if is_distributed():
        import torch

        all_reduce(torch.from_numpy(arr), op)  # shares arr's memory
    return arr


def all_reduce_tensors(tensors: Iterable[Tensor], op: str = "sum") -> None:
    """Reduce several tensors in place with one collective (gradients: one message per step
    instead of one per parameter). Tensors may be non-contiguous views."""
    if not is_distributed():
        return
    import torch

    tensors = list(tensors)
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    all_reduce(flat, op)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate each rank's ``t`` along dim 0, in rank order (ranks may hold different
    numbers of rows); ``t`` itself in one process."""
    if not is_distributed():
        return t
    import torch

    tdist = _tdist()
    t = t.contiguous()
    n_local = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(n_local) for _ in range(world_size())]
    tdist.all_gather(counts, n_local)
    n_max = int(max(int(c) for c in counts))
    padded = t.new_zeros((n_max, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    tdist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order; ``[obj]`` in one process.
    ``group``: a process group (default: the whole world)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    _tdist().all_gather_object(out, obj, group=group)
    return out


@contextmanager
def patient_group(timeout_s: float = PATIENT_TIMEOUT_S):
    """A gloo group of all ranks whose collectives wait up to ``timeout_s`` (default 30
    days), for the block: for ranks that work alone for hours (a spread sweep) and then
    meet. Enter it while the ranks are in step (creating it is itself collective); ``None``
    in one process. A rank that dies still fails the others at once (its connections close)."""
    if not is_distributed():
        yield None
        return
    tdist = _tdist()
    group = tdist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield group
    finally:
        tdist.destroy_process_group(group)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    _tdist().broadcast_object_list(box, src=src)
    return box[0]


@contextmanager
def together(what: str, group: Any = None):
    """Run the block on every rank, then agree: when it raised on any rank, every rank
    raises (the failing rank its own exception, the others :class:`RankFailed` naming it),
    instead of the healthy ranks waiting in the next collective until the timeout.
    ``group``: where to agree (a :func:`patient_group` when ranks may finish hours apart)."""
    error: BaseException | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 — re-raised below on this rank
        error = e
    message = None if error is None else f"{type(error).__name__}: {error}"
    messages = all_gather_object(message, group)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        r, m = failed[0]
        raise RankFailed(f"{what} failed on rank {r}: {m}")


@contextmanager
def on_main(make_context: Callable[[], AbstractContextManager[Any]], what: str):
    """Enter ``make_context()`` on rank 0 only (an output lock: one writer per directory)
    for the block; every rank fails together when entering it failed."""
    with ExitStack() as stack:
        with together(what):
            if is_main():
                stack.enter_context(make_context())
        yield


def batch_share(n_local: int) -> tuple[float, int]:
    """``(n_local / n_global, n_global)`` for a batch split over ranks; ``(1.0, n_local)``
    in one process."""
    if not is_distributed():
        return 1.0, n_local
    import torch

    n = all_reduce(torch.tensor([n_local], dtype=torch.int64))
    return n_local / int(n), int(n)


def mean(t: Tensor) -> Tensor:
    """Mean over the global batch of ``t`` (dim 0 split over ranks): ``t.mean(0)`` in one
    process, bit for bit."""
    if not is_distributed():
        return t.mean(0)
    import torch

    total = torch.cat([t.sum(0).reshape(-1).float(), t.new_tensor([t.shape[0]]).float()])
    all_reduce(total)
    return (total[:-1] / total[-1]).reshape(t.shape[1:]).to(t.dtype)


def cleanup() -> None:
    """Leave the process group (end of a ``torchrun`` program)."""
    tdist = _tdist()
    if tdist is not None and tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
