"""supermix_ext: the kernel layer of supermix.

Three fused ops (``mix``, ``gaussian_smooth``, ``newton_step``) with four interchangeable
implementations: the compiled C++/CUDA library (``cpp``), Triton kernels (``triton``) and the
pure-PyTorch reference (``reference``), chosen by ``backend=`` or ``SUPERMIX_BACKEND``.
The package imports wherever the compiled library was not built; ``auto`` then uses the
reference and warns once. ``deterministic=True`` / ``set_deterministic`` /
``deterministic_mode()`` make the GPU backward bit-reproducible (see ``supermix_ext.ops``).
"""
from supermix_ext._version_check import check_torch_version as _check_torch_version

_check_torch_version()  # before _C is loaded: refuse a _C built against another torch minor version

from supermix_ext import reference  # noqa: E402
from supermix_ext.ops import (  # noqa: E402
    BACKENDS,
    backend_info,
    deterministic_enabled,
    deterministic_mode,
    gaussian_smooth,
    mix,
    newton_step,
    resolve_backend,
    set_deterministic,
)

__all__ = [
    "BACKENDS",
    "backend_info",
    "deterministic_enabled",
    "deterministic_mode",
    "gaussian_smooth",
    "mix",
    "newton_step",
    "reference",
    "resolve_backend",
    "set_deterministic",
]
__version__ = "0.1.0"
