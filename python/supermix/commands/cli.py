"""Command line: ``supermix <command> [options]`` (also ``python -m supermix``).

Each subcommand lives in its own module, which provides ``add_parser(subparsers)`` (registering
its arguments and ``set_defaults(func=run)``) and ``run(args) -> int``. To add a command, append
its module name to :data:`COMMAND_MODULES`.

Bad arguments never show a traceback: argparse errors and :class:`supermix.errors.UsageError`
(raised anywhere under ``run``) print one line, ``supermix: error: ...``, and exit with status 2;
so does a ``FloatingPointError`` (a teacher or solver gone NaN/inf). An ``OSError`` (disk full,
permission) prints one line naming the file and exits with status 1.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys

from ..config import SettingError
from ..errors import UsageError

__all__ = ["COMMAND_MODULES", "build_parser", "main", "usage_message"]

# Subcommand modules, in the order ``supermix --help`` lists them (modules of this package).
COMMAND_MODULES: list[str] = [
    "train_teacher",   # supermix train-teacher
    "distill",         # supermix distill
    "train",           # supermix train
    "demo",            # supermix demo
    "generate",        # supermix generate
    "show",            # supermix show
]

PROG = "supermix"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SuperMix: supervised mixing augmentation (Dabouei et al., CVPR 2021).")
    try:
        from .. import __version__
        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    except ImportError:
        pass
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.add_parser(subparsers)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _os_error(e: OSError) -> str:
    """``cannot write PATH: reason`` (:class:`supermix.checkpoint.WriteError`) or
    ``reason: PATH`` for any other OSError."""
    from ..checkpoint import WriteError

    if isinstance(e, WriteError) or not e.filename:
        return _one_line(e)
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{e.strerror or type(e).__name__}: {where}"


def _report(message: str) -> None:
    """Print ``message`` to stderr in one write, so the lines of several ranks of a torchrun job
    sharing one stderr pipe never interleave mid-line (``print`` writes the text and the newline
    separately)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def usage_message(error: UsageError, options: frozenset[str] = frozenset()) -> str:
    """The line a usage error prints. The library names the setting (``lambda_s: ...``,
    ``mask_size: ...``); the command line names its flag: a :class:`SettingError` always, any
    other message that opens with a setting of the command's ``options`` (``--mask-size``)."""
    if isinstance(error, SettingError):
        flag = "--" + error.setting.replace("_", "-")
        return f"{flag}: expected {error.expected}, got {error.got!r}"
    text = str(error)
    opening = re.match(r"([a-z][a-z0-9_]*)(?=:)", text)
    if opening:
        flag = "--" + opening.group(1).replace("_", "-")
        if flag in options:
            return flag + text[opening.end():]
    return text


def _options(parser: argparse.ArgumentParser, command: str) -> frozenset[str]:
    """The option strings of ``command``'s subparser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(o for a in sub.choices[command]._actions for o in a.option_strings)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen command, return its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 and one message on bad arguments
    args.command_line = shlex.join([PROG, *argv])
    try:
        status = args.func(args)
    except UsageError as e:
        _report(f"{PROG}: error: {usage_message(e, _options(parser, args.command))}")
        return 2
    except FloatingPointError as e:  # a NaN/inf teacher or solver state: nothing was written
        _report(f"{PROG}: error: {_one_line(e)}")
        return 2
    except OSError as e:  # disk full, permission, I/O: one line naming the file, no traceback
        _report(f"{PROG}: error: {_os_error(e)}")
        return 1
    except KeyboardInterrupt:
        _report(f"{PROG}: interrupted")
        return 130
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
