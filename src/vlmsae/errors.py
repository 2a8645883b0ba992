"""Errors a user can fix: the CLI prints them as one ``Error: ...`` line and exits 2."""


class UserError(ValueError):
    """Bad input or artifacts that do not fit together; the message says how to fix it."""
