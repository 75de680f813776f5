"""Public ops, fake kernels, autograd registration and the backend switch.

Backends (``backend=`` argument, else the ``SUPERMIX_BACKEND`` environment variable, else
``"auto"``):

- ``"cpp"``: the compiled library ``supermix_ext._C`` (C++/OpenMP on CPU, CUDA on GPUs); the
  dispatcher picks the device kernel.
- ``"triton"``: the Triton kernels in ``supermix_ext.triton`` (GPU; on the CPU only under
  ``TRITON_INTERPRET=1``, for testing).
- ``"reference"``: ``supermix_ext.reference``, pure PyTorch.
- ``"auto"``: ``cpp`` where the library has a kernel for the tensor's device, else
  ``reference`` with a one-time warning that says so. ``backend_info()`` reports the choice.

Deterministic mode (``mix(..., deterministic=True)``, ``set_deterministic(True)``, the
``deterministic_mode()`` context, ``SUPERMIX_DETERMINISTIC=1``, or
``torch.use_deterministic_algorithms(True)``): the CUDA and Triton mix backward reduce onto the
mask grid in a fixed order (two passes) instead of with float atomics, so every op gives
bit-identical results run after run on one device. Everything else is deterministic already:
the CPU kernels whatever the thread count, and on GPUs the mix forward, ``gaussian_smooth`` and
``newton_step``.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from supermix_ext import reference

__all__ = [
    "BACKENDS",
    "backend_info",
    "deterministic_enabled",
    "deterministic_mode",
    "gaussian_smooth",
    "mix",
    "newton_step",
    "resolve_backend",
    "set_deterministic",
]

BACKENDS = ("auto", "cpp", "triton", "reference")
_OPS = ("mix", "mix_backward", "gaussian_smooth", "newton_step")
_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LOGIT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# Loading the compiled library and the Triton kernels
# --------------------------------------------------------------------------------------------
def _load_compiled() -> tuple[str | None, str | None]:
    """Load supermix_ext/_C*.so; return (path, error). Never raises."""
    candidates = sorted(glob.glob(str(Path(__file__).parent / "_C*.so")))
    candidates += sorted(glob.glob(str(Path(__file__).parent / "_C*.pyd")))
    if not candidates:
        return None, "the compiled library supermix_ext/_C was not built"
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError) as exc:
        return candidates[0], f"loading {candidates[0]} failed: {exc}"
    return candidates[0], None


_LIBRARY_PATH, _LIBRARY_ERROR = _load_compiled()


def _compiled_cuda_version() -> int:
    if _LIBRARY_ERROR is not None:
        return -1
    return int(torch.ops.supermix.cuda_version())


def cuda_mismatch_message(built: int, torch_cuda: str | None) -> str | None:
    """Why a _C compiled with CUDA ``built`` (e.g. 13000) cannot run under a torch on CUDA
    ``torch_cuda`` (e.g. "13.2"), or None. The major versions must match: CUDA keeps
    minor-version compatibility within a major release (as torch's own extension builder does,
    a 13.0 toolkit builds for a torch on CUDA 13.2, the torch 2.15 wheels), not across majors."""
    if built <= 0 or torch_cuda is None:
        return None
    built_major, built_minor = built // 1000, (built % 1000) // 10
    if built_major == int(torch_cuda.split(".")[0]):
        return None
    return (f"supermix_ext._C was compiled with CUDA {built_major}.{built_minor} but PyTorch uses "
            f"CUDA {torch_cuda} (the major versions must match); rebuild with "
            "`pip install --no-build-isolation .` against this PyTorch")


def _check_cuda_version_matches() -> None:
    message = cuda_mismatch_message(_compiled_cuda_version(), torch.version.cuda)
    if message is not None:
        raise RuntimeError(message)


_check_cuda_version_matches()


def _device_types_with_kernels() -> frozenset[str]:
    """Device types (``"cpu"``, ``"cuda"``) for which every compiled op has a kernel."""
    if _LIBRARY_ERROR is not None:
        return frozenset()
    found = set()
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"supermix::{op}", key) for op in _OPS):
            found.add(device_type)
    return frozenset(found)


_COMPILED_DEVICES = _device_types_with_kernels()

try:
    from supermix_ext import triton as _triton

    _TRITON_AVAILABLE = bool(_triton.AVAILABLE)
    _TRITON_REASON = getattr(_triton, "UNAVAILABLE_REASON", "")
except Exception as exc:  # a broken triton install must not break the package
    _triton = None
    _TRITON_AVAILABLE = False
    _TRITON_REASON = f"importing supermix_ext.triton failed: {exc}"


def _triton_device_types() -> frozenset[str]:
    if not _TRITON_AVAILABLE:
        return frozenset()
    if os.environ.get("TRITON_INTERPRET") == "1":
        return frozenset({"cpu", "cuda"})
    return frozenset({"cuda"})


_TRITON_DEVICES = _triton_device_types()


# --------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------
_warned_fallback: set[str] = set()


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """Return the concrete backend (``cpp``, ``triton`` or ``reference``) for ``device``.

    ``backend=None`` reads ``SUPERMIX_BACKEND`` (default ``auto``). An explicit backend that
    is not usable on ``device`` raises instead of falling back.
    """
    name = backend if backend is not None else os.environ.get("SUPERMIX_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    device_type = torch.device(device).type
    if name == "auto":
        if device_type in _COMPILED_DEVICES:
            return "cpp"
        if device_type not in _warned_fallback:
            _warned_fallback.add(device_type)
            warnings.warn(
                f"supermix_ext: no compiled kernels for device '{device_type}' "
                f"({_LIBRARY_ERROR or 'library built without them'}); backend 'auto' uses the "
                "pure-PyTorch reference. Set SUPERMIX_BACKEND=reference to silence this.",
                stacklevel=3,
            )
        return "reference"
    if name == "cpp" and device_type not in _COMPILED_DEVICES:
        raise RuntimeError(
            f"backend 'cpp' has no kernels for device '{device_type}': "
            f"{_LIBRARY_ERROR or 'the library was built without them'}"
        )
    if name == "triton" and device_type not in _TRITON_DEVICES:
        reason = _TRITON_REASON or (
            "Triton runs CPU tensors only under TRITON_INTERPRET=1"
            if device_type == "cpu"
            else "Triton kernels need a CUDA device"
        )
        raise RuntimeError(f"backend 'triton' is not usable on device '{device_type}': {reason}")
    return name


def backend_info() -> dict:
    """What was built and which backend ``auto`` uses on each device type.

    Returns a dict with ``library`` (path or None), ``library_error``, ``cuda_version`` (the
    CUDA the library was compiled with, -1 if none), ``compiled_devices``, ``triton_devices``,
    ``triton_error`` and ``auto`` ({device_type: backend}).
    """
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "library": _LIBRARY_PATH,
        "library_error": _LIBRARY_ERROR,
        "cuda_version": _compiled_cuda_version(),
        "compiled_devices": sorted(_COMPILED_DEVICES),
        "triton_devices": sorted(_TRITON_DEVICES),
        "triton_error": _TRITON_REASON or None,
        "auto": {d: ("cpp" if d in _COMPILED_DEVICES else "reference") for d in devices},
        "env": os.environ.get("SUPERMIX_BACKEND"),
    }


# --------------------------------------------------------------------------------------------
# Deterministic mode
# --------------------------------------------------------------------------------------------
def _env_deterministic() -> bool | None:
    value = os.environ.get("SUPERMIX_DETERMINISTIC")
    if value is None or value == "":
        return None
    return value.lower() in ("1", "true", "yes", "on")


# None: follow SUPERMIX_DETERMINISTIC (read at import) and torch's flag.
_deterministic: bool | None = _env_deterministic()


def set_deterministic(mode: bool | None) -> None:
    """Ask for the deterministic kernels (True), the fastest ones (False), or, with None, what
    ``SUPERMIX_DETERMINISTIC`` says. ``torch.use_deterministic_algorithms(True)`` turns them on
    whatever this says. Process-wide, like ``torch.use_deterministic_algorithms``."""
    global _deterministic
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"set_deterministic: mode must be a bool or None, got {type(mode).__name__}")
    _deterministic = mode


def deterministic_enabled() -> bool:
    """Whether ``mix`` (called without ``deterministic=``) uses the deterministic backward."""
    return bool(_deterministic) or torch.are_deterministic_algorithms_enabled()


@contextlib.contextmanager
def deterministic_mode(mode: bool = True) -> Iterator[None]:
    """``with supermix_ext.deterministic_mode():`` sets the mode for the block, then restores it.

    The mode is taken when ``mix`` runs its forward and carried to its backward, so a backward
    that runs after the block still uses the mode of its forward.
    """
    before = _deterministic
    set_deterministic(mode)
    try:
        yield
    finally:
        set_deterministic(before)


# --------------------------------------------------------------------------------------------
# Input checks (shared by every backend; the C++ kernels check again)
# --------------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_tensor(name: str, value, op: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"supermix_ext.{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_sigma(sigma, op: str) -> None:
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool):
        raise TypeError(f"supermix_ext.{op}: sigma must be a float, got {type(sigma).__name__}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"supermix_ext.{op}: sigma must be finite and >= 0, got {sigma}")


def _check_same_device(op: str, **tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"supermix_ext.{op}: {name} must be on the same device as {first_name} "
                f"({first.device}), got {t.device}"
            )


def _check_mix_inputs(images, logits) -> None:
    op = "mix"
    _check_tensor("images", images, op)
    _check_tensor("logits", logits, op)
    if images.dim() != 5:
        raise ValueError(f"supermix_ext.mix: images must have shape [B,k,C,H,W], got {_shape(images)}")
    if logits.dim() != 4:
        raise ValueError(f"supermix_ext.mix: logits must have shape [B,k,h,w], got {_shape(logits)}")
    if images.dtype not in _IMAGE_DTYPES:
        raise TypeError(
            f"supermix_ext.mix: images must be float32, float16, bfloat16 or float64, got {images.dtype}"
        )
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"supermix_ext.mix: logits must be float32 or float64, got {logits.dtype}")
    _check_same_device(op, images=images, logits=logits)
    B, k, _, H, W = images.shape
    if k < 2:
        raise ValueError(f"supermix_ext.mix: images must hold k >= 2 sources per sample, got k={k}")
    if tuple(logits.shape[:2]) != (B, k):
        raise ValueError(
            f"supermix_ext.mix: logits must have shape [B={B},k={k},h,w] to match images, "
            f"got {_shape(logits)}"
        )
    h, w = logits.shape[2:]
    if h < 1 or w < 1 or h > H or w > W:
        raise ValueError(
            f"supermix_ext.mix: the mask grid must satisfy 1 <= h <= H={H} and 1 <= w <= W={W}, "
            f"got logits {_shape(logits)}"
        )


def _check_smooth_inputs(grad, sigma) -> None:
    op = "gaussian_smooth"
    _check_tensor("grad", grad, op)
    if grad.dim() != 3:
        raise ValueError(f"supermix_ext.gaussian_smooth: grad must have shape [N,h,w], got {_shape(grad)}")
    if grad.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"supermix_ext.gaussian_smooth: grad must be float32 or float64, got {grad.dtype}")
    _check_sigma(sigma, op)


def _check_newton_inputs(logits, grad, loss, active, sigma) -> None:
    op = "newton_step"
    for name, value in (("logits", logits), ("grad", grad), ("loss", loss), ("active", active)):
        _check_tensor(name, value, op)
    if logits.dim() != 4:
        raise ValueError(f"supermix_ext.newton_step: logits must have shape [B,k,h,w], got {_shape(logits)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"supermix_ext.newton_step: logits must be float32 or float64, got {logits.dtype}")
    if grad.shape != logits.shape or grad.dtype != logits.dtype:
        raise ValueError(
            f"supermix_ext.newton_step: grad must match logits ({_shape(logits)}, {logits.dtype}), "
            f"got {_shape(grad)}, {grad.dtype}"
        )
    B = logits.shape[0]
    if loss.shape != (B,) or not loss.is_floating_point():
        raise ValueError(
            f"supermix_ext.newton_step: loss must be a float tensor of shape [B={B}], "
            f"got {_shape(loss)}, {loss.dtype}"
        )
    if active.shape != (B,) or active.dtype != torch.bool:
        raise ValueError(
            f"supermix_ext.newton_step: active must be a bool tensor of shape [B={B}], "
            f"got {_shape(active)}, {active.dtype}"
        )
    _check_same_device(op, logits=logits, grad=grad, loss=loss, active=active)
    _check_sigma(sigma, op)


# --------------------------------------------------------------------------------------------
# Fake kernels and autograd for the compiled and Triton ops
# --------------------------------------------------------------------------------------------
def _mix_fake(images, logits, deterministic=False):
    B, _, C, H, W = images.shape
    return images.new_empty((B, C, H, W)), logits.new_empty((B,))


def _mix_backward_fake(grad_mixed, grad_sparsity, images, logits, need_images_grad, deterministic=False):
    grad_images = images.new_empty(images.shape if need_images_grad else (0,))
    return grad_images, logits.new_empty(logits.shape)


def _gaussian_smooth_fake(grad, sigma):
    return grad.new_empty(grad.shape)


def _newton_step_fake(logits, grad, loss, active, sigma):
    return logits.new_empty(logits.shape)


def _mix_setup_context(ctx, inputs, output):
    images, logits = inputs[:2]
    ctx.save_for_backward(images, logits)
    ctx.need_images_grad = ctx.needs_input_grad[0]
    ctx.num_inputs = len(inputs)
    # The forward's mode decides the backward's: a call with deterministic=True stays so.
    ctx.deterministic = bool(inputs[2]) if len(inputs) > 2 else False


def _make_mix_backward(backward_op):
    def _mix_backward(ctx, grad_mixed, grad_sparsity):
        images, logits = ctx.saved_tensors
        grad_images, grad_logits = backward_op(
            grad_mixed.contiguous(), grad_sparsity.contiguous(), images, logits, ctx.need_images_grad,
            ctx.deterministic,
        )
        grads = ((grad_images if ctx.need_images_grad else None), grad_logits)
        return grads + (None,) * (ctx.num_inputs - 2)

    return _mix_backward


def _make_smooth_backward(smooth_op):
    # The zero-padded separable Gaussian is a symmetric linear map, so it is its own adjoint.
    def _smooth_backward(ctx, grad_out):
        return smooth_op(grad_out.contiguous(), ctx.sigma), None

    return _smooth_backward


def _smooth_setup_context(ctx, inputs, output):
    ctx.sigma = inputs[1]


def _register_compiled() -> None:
    if _LIBRARY_ERROR is not None:
        return
    ops = torch.ops.supermix
    torch.library.register_fake("supermix::mix")(_mix_fake)
    torch.library.register_fake("supermix::mix_backward")(_mix_backward_fake)
    torch.library.register_fake("supermix::gaussian_smooth")(_gaussian_smooth_fake)
    torch.library.register_fake("supermix::newton_step")(_newton_step_fake)
    torch.library.register_autograd(
        "supermix::mix", _make_mix_backward(ops.mix_backward), setup_context=_mix_setup_context
    )
    torch.library.register_autograd(
        "supermix::gaussian_smooth",
        _make_smooth_backward(ops.gaussian_smooth),
        setup_context=_smooth_setup_context,
    )


def _register_triton() -> None:
    if not _TRITON_AVAILABLE:
        return
    ops = torch.ops.supermix
    torch.library.register_autograd(
        "supermix::mix_triton",
        _make_mix_backward(ops.mix_backward_triton),
        setup_context=_mix_setup_context,
    )
    torch.library.register_autograd(
        "supermix::gaussian_smooth_triton",
        _make_smooth_backward(ops.gaussian_smooth_triton),
        setup_context=_smooth_setup_context,
    )


_register_compiled()
_register_triton()


def _require_float32_for_triton(op: str, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise TypeError(f"supermix_ext.{op}: backend 'triton' needs float32 {name}, got {t.dtype}")


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------
def mix(
    images: torch.Tensor,
    logits: torch.Tensor,
    *,
    backend: str | None = None,
    deterministic: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix k images through sigmoid-normalised, bilinearly upsampled masks (paper eq. 1, 4, 5).

    Args:
        images: [B,k,C,H,W], float32 / float16 / bfloat16 (float64 for gradcheck).
        logits: [B,k,h,w] mask logits, float32 (or float64), 1 <= h <= H, 1 <= w <= W.
        backend: ``auto`` | ``cpp`` | ``triton`` | ``reference`` (default: SUPERMIX_BACKEND).
        deterministic: bit-reproducible backward on GPUs (an ordered two-pass reduction instead
            of float atomics; k floats of scratch per pixel). None: ``deterministic_enabled()``.
            The CPU kernels are deterministic either way; the reference is as deterministic as
            PyTorch's own upsample backward.

    Returns:
        ``(mixed [B,C,H,W] in images' dtype, sparsity [B] in logits' dtype)``, where
        mixed = sum_i m_i * images_i and sparsity = mean |m_i (m_i - 1)| over (i, pixels),
        m = sigmoid(upsample(logits)) normalised over i. Differentiable in both inputs.
    """
    _check_mix_inputs(images, logits)
    name = resolve_backend(images.device, backend)
    ordered = deterministic_enabled() if deterministic is None else bool(deterministic)
    if name == "cpp":
        return torch.ops.supermix.mix(images, logits, ordered)
    if name == "triton":
        _require_float32_for_triton("mix", logits=logits)
        return torch.ops.supermix.mix_triton(images, logits, ordered)
    return reference.mix_ref(images, logits)


def gaussian_smooth(grad: torch.Tensor, sigma: float, *, backend: str | None = None) -> torch.Tensor:
    """Separable Gaussian smoothing of [N,h,w] planes, the g_sigma of paper eq. 7.

    Taps at integer offsets -r..r, r = floor(2.5 sigma), weights exp(-t^2 / 2 sigma^2)
    normalised to 1, zero padding; sigma = 0 is the identity. Differentiable (self-adjoint).
    """
    _check_smooth_inputs(grad, sigma)
    name = resolve_backend(grad.device, backend)
    sigma = float(sigma)
    if name == "cpp":
        return torch.ops.supermix.gaussian_smooth(grad, sigma)
    if name == "triton":
        _require_float32_for_triton("gaussian_smooth", grad=grad)
        return torch.ops.supermix.gaussian_smooth_triton(grad, sigma)
    return reference.gaussian_smooth_ref(grad, sigma)


def newton_step(
    logits: torch.Tensor,
    grad: torch.Tensor,
    loss: torch.Tensor,
    active: torch.Tensor,
    sigma: float,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """One Newton step with smooth projection (paper eq. 7) for every active sample.

    Args:
        logits, grad: [B,k,h,w] float32 (or float64).
        loss: [B] per-sample loss L'_SM; active: [B] bool; sigma: smoothing in grid cells.

    Returns:
        New logits [B,k,h,w]: logits_b - clamp(loss_b / (<g_s*grad_b, grad_b> + 1e-10),
        1e-4, 2000) * (g_s*grad_b) for active b, bit-identical copies for inactive b.
    """
    _check_newton_inputs(logits, grad, loss, active, sigma)
    name = resolve_backend(logits.device, backend)
    sigma = float(sigma)
    if name == "cpp":
        return torch.ops.supermix.newton_step(logits, grad, loss, active, sigma)
    if name == "triton":
        _require_float32_for_triton("newton_step", logits=logits, loss=loss)
        return torch.ops.supermix.newton_step_triton(logits, grad, loss, active, sigma)
    return reference.newton_step_ref(logits, grad, loss, active, sigma)
