"""Exceptions that mean "the caller asked for something wrong", not "the program is broken".

``supermix.commands.cli.main`` catches :class:`UsageError` (and so its subclasses) and prints one line,
``supermix: error: <message>``, exiting with status 2 like argparse does, instead of a traceback.
Messages name the setting (the keyword a library caller passed: ``mask_size: expected ...``),
what was expected and what was got; the command line reports one that opens with a setting of
the command under its flag (``--mask-size: expected ...``, ``commands.cli.usage_message``).
"""
from __future__ import annotations

__all__ = ["UsageError", "MissingFileError"]


class UsageError(ValueError):
    """A bad argument: wrong name, value out of range, inconsistent options.

    A ``ValueError`` so library callers can catch it the usual way.
    """


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the caller named (or a default one) does not exist or cannot be read.

    Both a :class:`UsageError` (the CLI reports it in one line) and a ``FileNotFoundError``.
    """
