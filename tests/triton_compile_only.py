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
"nan_dropping_minmax": {kernel: count}, "errors": [...]}``.
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


COMPILED: dict[str, set] = {}
MAX_SHARED: dict[str, int] = {}
# PTX min/max.f32 return the non-NaN operand (the .NaN forms propagate NaN): counted per kernel
# so the test can hold the kernels that must keep a NaN (newton_step's step clamp) to zero.
NAN_DROPPING_MINMAX: dict[str, int] = {}
_NAN_DROPPING = re.compile(r"\b(?:min|max)(?:\.ftz)?\.f32\b")


def _compile_only_run(original):
    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        name = self.fn.__name__
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
    too_big = {name: size for name, size in MAX_SHARED.items() if size > MAX_SHARED_BYTES[capability]}
    for name, size in too_big.items():
        errors.append(f"{name}: {size} bytes of shared memory, sm_{capability} has {MAX_SHARED_BYTES[capability]}")
    print(json.dumps({
        "arch": capability,
        "triton": triton.__version__,
        "compiled": {name: len(hashes) for name, hashes in sorted(COMPILED.items())},
        "max_shared": MAX_SHARED,
        "nan_dropping_minmax": NAN_DROPPING_MINMAX,
        "errors": errors,
    }))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
