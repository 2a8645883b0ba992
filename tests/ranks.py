"""Run a function on several CPU processes joined by gloo, as ``torchrun`` would, bounded.

``run_ranks(fn, 2, *args)`` spawns 2 processes with torchrun's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and a short collective timeout, calls
``fn(*args)`` in each (the library joins the group from the environment, as under
torchrun) and fails if any rank fails or the whole run outlives ``timeout`` seconds.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        VLMSAE_DIST_TIMEOUT="30",  # a dead peer fails the others within seconds, never hangs
        OMP_NUM_THREADS="1",
    )
    import torch

    from vlmsae.core import dist

    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        dist.cleanup()


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 90) -> None:
    """Run ``fn(*args)`` on ``world`` ranks; raise when one fails (``mp.ProcessRaisedException``
    or ``mp.ProcessExitedException``) or ``timeout`` seconds pass (``TimeoutError``)."""
    ctx = mp.start_processes(
        _entry, args=(fn, world, free_port(), args), nprocs=world, join=False, start_method="fork"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{world} ranks of {fn.__name__} still ran after {timeout} s")
