"""Checkpoints: ``torch.save`` of state dicts plus a config, loaded with ``weights_only=True``.

A model file holds ``{"state_dict": ..., "config": {...}, **extra}``. The config names what is
needed to rebuild the network without code: ``arch`` (a :func:`supermix.models.create` name),
``num_classes``, ``in_channels``, and usually ``data`` (the data spec), ``input_size`` (C, H, W)
and the normalisation ``mean``/``std``. Only tensors, numbers, strings, lists, dicts and tuples
are stored, so the restricted unpickler of ``weights_only=True`` reads every file.

Files are written atomically: to a temporary file in the same folder, flushed and fsynced, then
``os.replace``d over the target, so a killed run leaves the old file or the new one, never half.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MissingFileError, UsageError

__all__ = [
    "WriteError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "sha256_file",
    "REQUIRED_CONFIG",
]

REQUIRED_CONFIG = ("arch", "num_classes", "in_channels")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class WriteError(OSError):
    """An ``OSError`` (disk full, permission, read-only file system) while writing ``path``,
    whose message names the file: ``cannot write PATH: No space left on device``."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(path))
        self.message = f"cannot write {os.fspath(path)}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self.message


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    try:
        return _atomic_write_to(path, write)
    except WriteError:
        raise
    except OSError as e:  # the temporary file is gone; the target is untouched
        raise WriteError(path, e) from e


def _atomic_write_to(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in its folder, then rename).
    Serialised in memory first, so a full disk is an ``OSError`` (:class:`WriteError`), not
    torch's stream-writer error."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict, **extra) -> Path:
    """Save ``{"state_dict", "config", **extra}`` atomically.

    Args:
        path: target file (its folder is created).
        model: the network; its ``state_dict()`` is stored as is (same dtypes).
        config: at least ``arch``, ``num_classes``, ``in_channels``; plain Python values.
        extra: more entries (optimizer state, epoch, RNG state, metrics).
    """
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise UsageError(f"config: expected keys {list(REQUIRED_CONFIG)}, missing {missing}")
    for key in ("state_dict", "config"):
        if key in extra:
            raise UsageError(f"extra: {key!r} is reserved, got it as an extra entry")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({"state_dict": state, "config": dict(config), **extra}, path)


class CheckpointError(MissingFileError):
    """A checkpoint file that cannot be used: pickled code, not a torch checkpoint, or the
    wrong structure. One line on the command line (a :class:`UsageError`), exit 2."""


_BLOCKED_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")
_BAD_OPCODE = re.compile(r"Unsupported operand (\d+)")


def _load_error(path: Path, e: Exception) -> CheckpointError:
    """One line saying why ``torch.load(weights_only=True)`` refused a file (never torch's
    advice to load it with ``weights_only=False``)."""
    text = str(e)
    blocked = _BLOCKED_GLOBAL.search(text)
    if blocked:
        return CheckpointError(
            f"checkpoint: {path} holds pickled code (the global {blocked.group(1)}), which "
            f"torch.load(weights_only=True) blocks; it was not run. A supermix checkpoint holds "
            f"only tensors, numbers, strings and plain containers")
    opcode = _BAD_OPCODE.search(text)
    if opcode:
        detail = f"unpickling stopped at opcode {opcode.group(1)}"
    elif isinstance(e, EOFError) or not text:
        detail = f"{type(e).__name__}: the file ends early or is empty"
    else:
        detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
        detail = f"{type(e).__name__}: {detail[:160]}"
    return CheckpointError(f"checkpoint: {path} is not a torch checkpoint (corrupt, truncated "
                           f"or another kind of file; {detail})")


def _check_structure(path: Path, ckpt: Any) -> None:
    def wrong(what: str):
        raise CheckpointError(f"checkpoint: {path}: wrong structure: {what}")

    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        wrong(f"expected a dict with 'state_dict' and 'config', got {got}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        wrong(f"'state_dict' is a {type(state).__name__}, expected a dict of tensors")
    bad = next((k for k, v in state.items()
                if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        wrong(f"'state_dict' entry {bad!r} is a {type(state[bad]).__name__}, expected a tensor")
    config = ckpt["config"]
    if not isinstance(config, dict):
        wrong(f"'config' is a {type(config).__name__}, expected a dict")
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        wrong(f"'config' lacks {missing}")
    if not isinstance(config["arch"], str):
        wrong(f"config arch is {config['arch']!r}, expected a model name")
    for key, low in (("num_classes", 1), ("in_channels", 1)):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            wrong(f"config {key} is {value!r} ({type(value).__name__}), expected an integer "
                  f">= {low}")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint dict with ``torch.load(weights_only=True)`` and check its structure
    (``state_dict`` a dict of tensors; ``config`` a dict with ``arch``, integer ``num_classes``
    and ``in_channels``).

    Raises:
        MissingFileError: the file is missing or unreadable.
        CheckpointError: (a MissingFileError) pickled code (the blocked global is named), not
            a torch checkpoint (random bytes, truncated, another format), or the wrong
            structure.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint: no file at {path}")
    try:
        with warnings.catch_warnings():
            # A file that is not a checkpoint but starts like a pickle (0x80, then a byte read as
            # the protocol) makes torch warn before it fails: the error below says it once.
            warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                    category=UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise MissingFileError(f"checkpoint: cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # noqa: BLE001 -- unpickling, zip, EOF and format errors
        raise _load_error(path, e) from e
    _check_structure(path, ckpt)
    return ckpt


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)
