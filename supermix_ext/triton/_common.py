"""Shared plumbing of the Triton ops: availability, op registration, argument checks.

Triton runs on CUDA tensors when compiled for a GPU, and on CPU tensors only under the
interpreter (``TRITON_INTERPRET=1`` set in the environment before ``triton`` is imported).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "INTERPRETED", "register_op", "check_device"]

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401

    _TRITON_IMPORTED = True
    _IMPORT_ERROR = ""
except Exception as exc:  # ImportError, or a broken install failing in its own import
    _TRITON_IMPORTED = False
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

if not _TRITON_IMPORTED:
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton cannot be imported ({_IMPORT_ERROR})"
elif INTERPRETED:
    AVAILABLE = True
    UNAVAILABLE_REASON = ""
elif torch.cuda.is_available():
    AVAILABLE = True
    UNAVAILABLE_REASON = ""
else:
    AVAILABLE = False
    UNAVAILABLE_REASON = (
        "triton is installed but no CUDA device is visible; set TRITON_INTERPRET=1 before "
        "importing supermix_ext to run the Triton kernels on CPU tensors under the interpreter"
    )


def register_op(name: str, fake: Callable) -> Callable[[Callable], object]:
    """Register ``fn`` as the custom op ``name`` (schema inferred from its type hints).

    Compiled Triton: ``torch.library.triton_op``, so ``torch.compile`` traces into the kernels
    (``wrap_triton``) and the function itself serves as the fake kernel.
    Interpreter: ``wrap_triton`` hands back the raw ``InterpretedFunction``, which cannot be
    traced (it reads tensor data with numpy, impossible on fake tensors), so the op is an opaque
    ``torch.library.custom_op`` with the explicit shape-only ``fake``; ``torch.compile`` then
    keeps it as one node in the graph and calls it eagerly at run time.
    """

    def decorate(fn: Callable) -> object:
        if INTERPRETED:
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
        else:
            op = torch.library.triton_op(name, fn, mutates_args=())
        return op

    return decorate


def check_device(tensor: torch.Tensor, arg: str, op: str) -> None:
    """CPU tensors only work under the interpreter; say so instead of a Triton driver error."""
    if tensor.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            f"supermix::{op}: {arg} is on the CPU; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before importing triton, to interpret them on CPU)"
        )


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)
