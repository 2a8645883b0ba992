"""Interrupts that save: Ctrl-C (SIGINT) and a scheduler's SIGTERM stop a long job cleanly.

Slurm and other schedulers send SIGTERM before they kill a preempted job. Inside
:func:`graceful_stop` the first SIGINT or SIGTERM only sets :attr:`Stop.requested`: the loop
finishes its current step, saves what it has (a checkpoint, the current shard), and raises
:class:`~vlmsae.core.errors.Interrupted`, which the CLI prints as one line
(``interrupted at …; continue with --resume``) with exit code 130 (SIGINT) or 143 (SIGTERM).
A second signal stops at once (``KeyboardInterrupt``). Outside the main thread signal
handlers cannot be set: there the context is a flag nobody sets.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vlmsae.core.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Stop:
    """Set by the first signal inside :func:`graceful_stop`."""

    signum: int | None = None
    """The signal received (None: none yet)."""

    @property
    def requested(self) -> bool:
        """A signal asked the job to stop after its current step."""
        return self.signum is not None

    def agreed(self) -> bool:
        """Whether a signal reached any rank (every rank must call it at the same point:
        under ``torchrun`` it is a collective, so the ranks stop at the same step)."""
        from vlmsae.core import dist

        if not dist.is_distributed():
            return self.requested
        import torch

        return bool(dist.all_reduce(torch.tensor(int(self.requested))))

    def interrupted(self, where: str) -> Interrupted:
        """The exception to raise once the job has saved: ``interrupted at WHERE; continue
        with --resume`` with the signal's exit code."""
        signum = self.signum if self.signum is not None else signal.SIGTERM  # another rank's
        name = signal.Signals(signum).name
        return Interrupted(f"{name}: interrupted at {where}; continue with --resume", signum)


@contextmanager
def graceful_stop() -> Iterator[Stop]:
    """Within the block, SIGINT / SIGTERM set the returned :class:`Stop` instead of
    stopping the process (the second one raises ``KeyboardInterrupt``); the previous
    handlers come back on exit."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt  # a second signal: stop now
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
