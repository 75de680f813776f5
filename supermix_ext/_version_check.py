"""The torch that supermix_ext._C was compiled against must be the running torch's minor version.

A C++ extension is built against one torch's C++ API and ABI, which change between minor
versions: loading it into another can fail with undefined symbols or, worse, load and misbehave.
The build writes ``_build_info.py`` next to ``_C`` (``TORCH_VERSION``, the torch it compiled
against); the wheel pins ``torch>=X.Y,<X.(Y+1)``; this check, run before ``_C`` is loaded, catches
a torch changed after installation. Without ``_C`` (not built) or without the build record (a
build older than the record) there is nothing to check.
"""
from __future__ import annotations

import glob
import importlib
import re
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def built_torch_version() -> str | None:
    """The torch version _C was compiled against, or None when not recorded."""
    try:
        info = importlib.import_module("supermix_ext._build_info")
    except ImportError:
        return None
    version = getattr(info, "TORCH_VERSION", None)
    return version if isinstance(version, str) else None


def mismatch_message(built: str, running: str) -> str | None:
    """The one-line error for a _C built against torch ``built`` run under torch ``running``."""
    built_mm, running_mm = major_minor(built), major_minor(running)
    if built_mm is None or running_mm is None or built_mm == running_mm:
        return None
    return (
        f"supermix_ext._C was built against torch {built} but torch {running} is installed "
        f"(the minor versions must match): install torch=={built_mm[0]}.{built_mm[1]}.* or rebuild "
        "supermix against this torch (pip install --no-build-isolation .)"
    )


def check_torch_version() -> None:
    """Raise ImportError when the compiled library was built against another torch minor version."""
    if not glob.glob(str(_PACKAGE_DIR / "_C*.so")) + glob.glob(str(_PACKAGE_DIR / "_C*.pyd")):
        return
    built = built_torch_version()
    if built is None:
        return
    message = mismatch_message(built, torch.__version__)
    if message is not None:
        raise ImportError(message)
