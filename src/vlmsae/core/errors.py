"""Every exception class vlmsae raises on purpose, in one place.

A :class:`UserError` (and every subclass) is a mistake the user can fix: the CLI prints
it as one ``Error: ...`` line and exits 2. :class:`NonFiniteError` is reported the same
way. Anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input or artifacts that do not fit together; the message says how to fix it."""


class OutputError(OSError, UserError):
    """An output could not be written for a reason the user fixes (full disk, read-only
    file system, no permission, a file where a folder is expected). ``errno`` is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


class StoreError(UserError, RuntimeError):
    """A store directory is missing, incomplete or inconsistent (a user-fixable problem:
    the CLI prints it as one ``Error:`` line; still a ``RuntimeError`` for old callers)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, from a newer vlmsae, damaged or inconsistent (a
    user-fixable problem: one ``Error:`` line in the CLI; still a ``RuntimeError``)."""


class ConvertError(UserError):
    """The file is not a dictionary_learning state dict this converter understands."""


class SAELensFormatError(UserError):
    """An SAELens folder vlmsae cannot read faithfully (the message says why)."""


class HubError(UserError):
    """An SAE could not be found, downloaded or uploaded (the message says how to fix it)."""


class NonFiniteError(RuntimeError):
    """A batch or the loss became NaN / Inf; training stopped at the last good checkpoint."""


class RankFailed(RuntimeError):
    """Another rank failed in a step that all ranks check together."""


class Interrupted(Exception):
    """A long job stopped at SIGINT / SIGTERM after saving its progress (see
    :mod:`vlmsae.core.interrupt`); the CLI prints the message and exits ``128 + signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum
