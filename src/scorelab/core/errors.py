"""Exceptions that mean "the user asked for something that cannot be done", with a message saying what to do."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (config value, path, file): the message says what to do.

    The command-line entry points print it as one ``error: ...`` line and exit with status 2.
    """


class UnsafeFileError(UserError):
    """A file would need arbitrary unpickling to load, which can run code: scorelab refuses it."""
