"""Compile every Triton kernel variant the op tests use for one GPU architecture, with no GPU.

Run by tests/test_gpu_compile.py in a fresh process (``python tests/triton_compile_only.py 90``):
Triton is pointed at a target-only driver (it names the architecture and nothing else), every
kernel launch is turned into a compile-only launch (``warmup=True``), and the public Triton ops
are called over the shared shape, dtype and sigma lists of tests/testing.py,
so the real host launchers choose the block sizes, grids and constexprs exactly as on a GPU and
Triton compiles each variant to PTX and a cubin with its ptxas. The tensors are CPU tensors
(never read: nothing runs), let through the launchers' CPU check, which otherwise asks for the
interpreter; one case per kernel is past 2^31 - 1 elements, for the int64-offset variants (its
tensors cost address space only). Prints one JSON object:
``{"arch": 90, "compiled": {kernel: variants}, "max_shared": {kernel: bytes},
"nan_dropping_minmax": {kernel: count}, "written": {kernel: [args]}, "errors": [...]}``.

Each variant also goes through torch.compile's own analysis of which tensor arguments a kernel
writes (what ``triton_op`` tracing uses: an argument it reports as written is copied back into
the caller's tensor, which fails for a leaf that requires grad). An argument reported as written
that is not among the kernel's outputs in ``OUTPUTS`` is an error: torch 2.11's analysis once
reported the mix backward's logits as written, and torch.compile of the Triton mix failed on a GPU.
"""
from __future__ import annotations

import json
import os
import re
import sys
import traceback
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

# Shared memory a block may use on each architecture (CUDA programming guide, opt-in maximum).
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}


class TargetOnlyDriver(DriverBase):
    """A Triton driver that knows its target and nothing else: enough to compile, never to run."""

    def __init__(self, capability: int):
        super().__init__()
        self.target = GPUTarget("cuda", capability, 32)

    @classmethod
    def is_active(cls):
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("compile-only driver")

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_benchmarker(self):
        raise NotImplementedError("compile-only driver")


# The tensor arguments each kernel writes (its docstring's outputs); every other tensor is read only.
OUTPUTS = {
    "_mix_fwd_kernel": {"mixed_ptr", "partial_ptr"},
    "_mix_bwd_kernel": {"grad_images_ptr", "grad_logits_ptr", "dz_ptr"},
    "_bilinear_adjoint_kernel": {"grad_logits_ptr"},
    "_gaussian_smooth_kernel": {"out_ptr"},
    "_newton_step_kernel": {"out_ptr"},
}

COMPILED: dict[str, set] = {}
WRITTEN: dict[str, set] = {}
ANALYSIS_ERRORS: list[str] = []
MAX_SHARED: dict[str, int] = {}
# PTX min/max.f32 return the non-NaN operand (the .NaN forms propagate NaN): counted per kernel
# so the test can hold the kernels that must keep a NaN (newton_step's step clamp) to zero.
NAN_DROPPING_MINMAX: dict[str, int] = {}
_NAN_DROPPING = re.compile(r"\b(?:min|max)(?:\.ftz)?\.f32\b")


def _written_args(jit_fn, kwargs: dict) -> set[str]:
    """The tensor arguments torch.compile's analysis says ``jit_fn`` writes (``identify_accessed_tensors``
    where the release has it, as 2.14 does; else ``identify_mutated_tensors``, as in 2.11, which
    reports every tensor when it fails)."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    if hasattr(wrap, "identify_accessed_tensors"):
        accesses = wrap.identify_accessed_tensors(jit_fn, dict(kwargs), {})
        return {dep.name for dep in accesses.read_writes.writes if isinstance(kwargs.get(dep.name), torch.Tensor)}
    return set(wrap.identify_mutated_tensors(jit_fn, dict(kwargs), {}))


def _check_written(jit_fn, args: tuple, kwargs: dict) -> None:
    name = jit_fn.fn.__name__
    bound = dict(zip(jit_fn.arg_names, args))
    bound.update((k, v) for k, v in kwargs.items() if k in jit_fn.arg_names)
    written = _written_args(jit_fn, bound)
    WRITTEN.setdefault(name, set()).update(written)
    wrong = written - OUTPUTS[name]
    if wrong:
        ANALYSIS_ERRORS.append(
            f"{name}: torch.compile's analysis reports the inputs {sorted(wrong)} as written "
            f"(outputs: {sorted(OUTPUTS[name])}); a traced triton_op would copy into them"
        )


def _compile_only_run(original):
    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        name = self.fn.__name__
        if kernel.hash not in COMPILED.get(name, set()):
            _check_written(self, args, kwargs)
        COMPILED.setdefault(name, set()).add(kernel.hash)
        MAX_SHARED[name] = max(MAX_SHARED.get(name, 0), int(kernel.metadata.shared))
        found = len(_NAN_DROPPING.findall(kernel.asm["ptx"]))
        NAN_DROPPING_MINMAX[name] = max(NAN_DROPPING_MINMAX.get(name, 0), found)
        return kernel

    return run


def _cases():
    """(description, thunk) for every op call of the op tests: the shapes and dtypes of
    tests/test_ops.py, with the backward in the modes those tests use."""
    from supermix_ext.triton.gaussian_smooth import gaussian_smooth_triton
    from supermix_ext.triton.mix import mix_backward_triton, mix_triton
    from supermix_ext.triton.newton_step import newton_step_triton
    from testing import GRID_SHAPES, IMAGE_DTYPES, MIX_SHAPES, SIGMAS, SMALL_MIX_SHAPES, MixShape

    device = torch.device("cpu")
    opcheck_shape = MixShape(2, 3, 2, 9, 7, 4, 3)
    # (shapes, image dtypes, need_images_grad, deterministic) of the backward's callers.
    backward_uses = [
        (MIX_SHAPES, [torch.float32, torch.bfloat16], [True], [False]),  # gradients vs reference
        (MIX_SHAPES, [torch.float32], [True], [True]),  # deterministic gradients
        ([MIX_SHAPES[1], opcheck_shape], [torch.float32], [False], [False, True]),  # logits only, opcheck
        ([opcheck_shape], [torch.float32], [True], [False, True]),
    ]
    for s in list(MIX_SHAPES) + list(SMALL_MIX_SHAPES) + [opcheck_shape]:
        for dtype in IMAGE_DTYPES:
            images = torch.empty(s.B, s.k, s.C, s.H, s.W, dtype=dtype, device=device)
            logits = torch.empty(s.B, s.k, s.h, s.w, device=device)
            yield f"mix {s} {dtype}", lambda i=images, l=logits: mix_triton(i, l)
    for shapes, dtypes, image_grads, modes in backward_uses:
        for s in shapes:
            for dtype in dtypes:
                images = torch.empty(s.B, s.k, s.C, s.H, s.W, dtype=dtype, device=device)
                logits = torch.empty(s.B, s.k, s.h, s.w, device=device)
                grad_mixed = torch.empty(s.B, s.C, s.H, s.W, dtype=dtype, device=device)
                grad_sparsity = torch.empty(s.B, device=device)
                for n in image_grads:
                    for d in modes:
                        yield (
                            f"mix_backward {s} {dtype} need_images_grad={n} deterministic={d}",
                            lambda a=(grad_mixed, grad_sparsity, images, logits, n, d): mix_backward_triton(*a),
                        )
    # Past 2^31 - 1 elements the launchers switch to int64 offsets: one such variant per kernel.
    # The tensors are never touched, so they cost address space only.
    huge = MixShape(1, 2, 1, 32768, 32768, 8, 8)
    images = torch.empty(huge.B, huge.k, huge.C, huge.H, huge.W, dtype=torch.float16, device=device)
    logits = torch.empty(huge.B, huge.k, huge.h, huge.w, device=device)
    yield f"mix {huge} int64", lambda: mix_triton(images, logits)
    grad_mixed = torch.empty(huge.B, huge.C, huge.H, huge.W, dtype=torch.float16, device=device)
    for d in (False, True):
        yield (f"mix_backward {huge} int64 deterministic={d}",
               lambda d=d: mix_backward_triton(grad_mixed, torch.empty(1, device=device), images, logits, True, d))
    planes = torch.empty(2, 32768, 32768, device=device)
    yield "gaussian_smooth 2x32768x32768 int64", lambda: gaussian_smooth_triton(planes, 1.0)
    yield ("newton_step 1x2x32768x32768 int64",
           lambda: newton_step_triton(planes[None], planes[None], torch.empty(1, device=device),
                                      torch.ones(1, dtype=torch.bool, device=device), 1.0))
    del images, logits, grad_mixed, planes

    grids = [(g, sigma) for g in GRID_SHAPES for sigma in SIGMAS]
    grids += [((2, 3, 4, 3), 1.0), ((6, 1, 4, 3), 1.0), ((6, 1, 4, 3), 0.7), ((1, 1, 9, 9), 1.0),
              ((6, 3, 5, 7), 1.0), ((2, 2, 4, 4), 0.0), ((2, 2, 4, 4), 1.0)]
    for (B, k, h, w), sigma in grids:
        planes = torch.empty(B * k, h, w, device=device)
        logits = torch.empty(B, k, h, w, device=device)
        loss = torch.empty(B, device=device)
        active = torch.empty(B, dtype=torch.bool, device=device)
        yield (f"gaussian_smooth {B * k}x{h}x{w} sigma={sigma}",
               lambda a=(planes, sigma): gaussian_smooth_triton(*a))
        yield (f"newton_step {B}x{k}x{h}x{w} sigma={sigma}",
               lambda a=(logits, logits, loss, active, sigma): newton_step_triton(*a))


def main(capability: int) -> int:
    driver.set_active(TargetOnlyDriver(capability))
    JITFunction.run = _compile_only_run(JITFunction.run)
    from supermix_ext.triton import _common

    _common.INTERPRETED = True  # let CPU tensors through check_device; tile sizes stay the GPU's
    errors = []
    for description, call in _cases():
        try:
            call()
        except Exception as exc:  # report every failing variant, not just the first
            errors.append(f"{description}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
    errors += ANALYSIS_ERRORS
    too_big = {name: size for name, size in MAX_SHARED.items() if size > MAX_SHARED_BYTES[capability]}
    for name, size in too_big.items():
        errors.append(f"{name}: {size} bytes of shared memory, sm_{capability} has {MAX_SHARED_BYTES[capability]}")
    print(json.dumps({
        "arch": capability,
        "triton": triton.__version__,
        "compiled": {name: len(hashes) for name, hashes in sorted(COMPILED.items())},
        "max_shared": MAX_SHARED,
        "nan_dropping_minmax": NAN_DROPPING_MINMAX,
        "written": {name: sorted(args) for name, args in sorted(WRITTEN.items())},
        "errors": errors,
    }))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
