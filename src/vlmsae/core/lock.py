"""One writer per output directory: an exclusive ``flock`` on ``DIR/.vlmsae.lock``.

The lock file names its holder (pid, host, command, start time) so that a second writer is
refused at once with a message that says who is writing. The kernel drops an ``flock``
when its holder dies (even by ``kill -9``), so a lock is never stale; the file itself stays
behind and only informs. The lock is re-entrant within a process (``cache`` locks OUT and
may lock a store inside it; a library caller may already hold it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmsae.core.errors import UserError
from vlmsae.core.io import ensure_dir, output_error

log = logging.getLogger(__name__)
LOCK_FILE = ".vlmsae.lock"
# Open lock files of this process by directory: flock conflicts between two descriptors
# of one process too, so a nested lock on the same directory must reuse the first one.
_HELD: dict[str, list[int]] = {}  # directory -> [fd, depth]


def _holder_text(fd: int) -> str:
    """Who holds the lock, from the lock file's content (``pid N on host H (...)``)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not recorded its name yet)"
    return (
        f"pid {info['pid']} on host {info.get('host', '?')} "
        f"({info.get('command', 'vlmsae')}, since {info.get('since', '?')})"
    )


def _acquire(folder: Path, what: str) -> int:
    ensure_dir(folder)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        converted = output_error(path, e)
        if converted is e:
            raise
        raise converted from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_text(fd)
        os.close(fd)
        raise UserError(
            f"{folder} is being written by {holder}; wait for it to finish or choose another --out"
        ) from None
    except OSError as e:  # a file system without locks (some network / FUSE mounts)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        log.warning(
            "%s: the file system cannot lock (%s); make sure no other process writes there "
            "at the same time",
            folder,
            e.strerror,
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": what,
        "argv": sys.argv,
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with contextlib.suppress(OSError):  # a full disk: the content only informs
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):  # a full or read-only disk: the content only informs
        os.ftruncate(fd, 0)  # before unlocking: the next holder writes its own name
    # Unlock explicitly: forked workers (DataLoader) share the open file, and closing our
    # descriptor alone would keep the lock while they live.
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextmanager
def output_lock(out_dir: str | Path, what: str = "vlmsae") -> Iterator[Path]:
    """Hold an exclusive lock on the output directory ``out_dir`` (created) for the block.

    Args:
        out_dir: the directory this process is about to write.
        what: the command, as the refusal names it (``"vlmsae cache"``).

    Raises:
        UserError: another live process holds the lock; the message names its pid, host,
            command and start time.
    """
    key = _take(Path(out_dir), what)
    try:
        yield Path(out_dir)
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            _release(_HELD.pop(key)[0])


def lock_until_exit(out_dir: str | Path, what: str = "vlmsae") -> Path:
    """Take the lock of :func:`output_lock` on ``out_dir`` and keep it until this process
    exits (the kernel releases it then): for CLI commands, which write their output and end.
    Under ``torchrun`` rank 0 takes it for the whole job (its ranks write together)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from vlmsae.core import dist

        if dist.init_from_env() and not dist.is_main():
            return Path(out_dir)
    _take(Path(out_dir), what)  # never given back: the depth stays above 0
    return Path(out_dir)


def _take(folder: Path, what: str) -> str:
    """Lock ``folder`` or, when this process holds it already, count one more holder."""
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_acquire(folder, what), 1]
    return key
