"""What differs between the torch and Triton releases supermix supports (torch 2.11 to 2.15,
Triton 3.6 to 3.9), in one place: the rest of the package calls these and never compares
versions itself.

- ``triton_launcher``: ``torch.library.wrap_triton`` hands the interpreter's kernels
  (``InterpretedFunction``, what ``@triton.jit`` gives under ``TRITON_INTERPRET=1``) back as
  they are in torch 2.13 and 2.14; torch 2.11 raises "wrap_triton only works on functions
  annotated with triton.jit or triton.autotune". Under the interpreter the ops are
  opaque ``custom_op``s that ``torch.compile`` never traces into, so the kernel is launched as it
  is there, on every release; compiled kernels always go through ``wrap_triton``.
"""
from __future__ import annotations

import re

__all__ = ["triton_launcher", "interpreter_problem"]


def triton_launcher(kernel, interpreted: bool):
    """``kernel`` ready for ``[grid](*args)``: through ``wrap_triton`` when compiled (so
    ``torch.compile`` traces the launch inside ``triton_op``s), as it is under the interpreter."""
    if interpreted:
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def _version(text: str) -> tuple[int, int]:
    major, minor = (int(v) for v in re.findall(r"\d+", text)[:2])
    return major, minor


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run the kernels with these releases, or None."""
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run these kernels with NumPy "
                f"{numpy_version} (it calls int() on one-element arrays, which NumPy 2.4 "
                "refuses): pip install 'numpy<2.4', or Triton >= 3.7")
    return None
