"""Shared plumbing of the Triton ops: availability, op registration, argument checks, launches.

Triton runs on CUDA tensors when compiled for a GPU, and on CPU tensors only under the
interpreter (``TRITON_INTERPRET=1`` set in the environment before ``triton`` is imported).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import torch

from .._compat import interpreter_problem, triton_launcher

__all__ = [
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "INTERPRETED",
    "MAX_GRID",
    "INT32_MAX",
    "register_op",
    "check_device",
    "check_grid",
    "device_guard",
    "launch",
    "needs_int64_index",
]

# CUDA's grid limits: 2^31 - 1 blocks along x, 65535 along y and z. The launchers flatten their
# work onto axis 0.
MAX_GRID = (2**31 - 1, 65535, 65535)
# Offsets into tensors with more elements than this need 64-bit index arithmetic in the kernels.
INT32_MAX = 2**31 - 1

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton

    _TRITON_IMPORTED = True
    _IMPORT_ERROR = ""
except Exception as exc:  # ImportError, or a broken install failing in its own import
    _TRITON_IMPORTED = False
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

if not _TRITON_IMPORTED:
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton cannot be imported ({_IMPORT_ERROR})"
elif INTERPRETED:
    import numpy

    UNAVAILABLE_REASON = interpreter_problem(triton.__version__, numpy.__version__) or ""
    AVAILABLE = not UNAVAILABLE_REASON
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


def needs_int64_index(*tensors_numel: int) -> bool:
    """Whether a kernel addressing tensors of these element counts needs int64 offsets."""
    return max(tensors_numel, default=0) > INT32_MAX


def check_grid(grid: Sequence[int], op: str) -> None:
    """A grid CUDA can launch: at most ``MAX_GRID`` programs along each axis."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        check(
            size <= limit,
            f"supermix::{op}: {size} programs along grid axis {axis} exceed CUDA's limit of {limit}",
        )


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device: Triton launches on the current device, whatever
    device the tensors are on (tensors on cuda:1 with cuda:0 current read illegal addresses)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launch(kernel, grid: tuple[int, ...], device: torch.device, op: str, *args, **kwargs) -> None:
    """Launch the Triton ``kernel`` on ``grid`` on ``device`` (every launch site goes through here).

    ``wrap_triton`` lets ``torch.compile`` trace the launch inside ``triton_op``s (under the
    interpreter the kernel is launched as it is: ``supermix_ext._compat.triton_launcher``).
    """
    check_grid(grid, op)
    with device_guard(device):
        triton_launcher(kernel, INTERPRETED)[grid](*args, **kwargs)
