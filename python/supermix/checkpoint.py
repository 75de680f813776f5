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
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MissingFileError, UsageError

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "sha256_file",
    "REQUIRED_CONFIG",
]

REQUIRED_CONFIG = ("arch", "num_classes", "in_channels")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
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
    """``torch.save(obj)`` to ``path`` atomically (temporary file in its folder, then rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


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


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint dict with ``torch.load(weights_only=True)``.

    Raises:
        MissingFileError: the file is missing, unreadable, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint: no file at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise MissingFileError(f"checkpoint: cannot read {path}: {e}") from e
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [""]
        detail = next((line.strip() for line in lines if "WeightsUnpickler error" in line),
                      lines[0])
        if "Unsupported global" in detail:
            detail = detail.split(" was not an allowed")[0].replace("WeightsUnpickler error: ", "")
            raise MissingFileError(
                f"checkpoint: {path} holds Python objects that torch.load(weights_only=True) "
                f"refuses ({detail}); only tensors, numbers, strings and plain containers "
                f"are allowed") from e
        raise MissingFileError(f"checkpoint: {path} is corrupt ({detail})") from e
    except Exception as e:  # noqa: BLE001 -- zip, EOF and format errors all mean "corrupt"
        raise MissingFileError(
            f"checkpoint: {path} is corrupt or not a torch.save file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise MissingFileError(f"checkpoint: {path}: expected a dict with 'state_dict' and "
                               f"'config', got {got}")
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
