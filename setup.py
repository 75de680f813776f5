"""Build of supermix_ext._C, the compiled kernels (C++/OpenMP, plus CUDA when a toolchain is present).

What is built is decided by the toolchain and two switches, never by a visible GPU:

- ``FORCE_CPU=1``: C++/OpenMP only.
- ``FORCE_CUDA=1``: C++ and CUDA; an error if no CUDA toolchain (``CUDA_HOME`` / ``nvcc``) is found.
- neither: CUDA is built when the toolchain is found, otherwise C++ only.

``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures; with no GPU visible and no list given it
defaults to ``DEFAULT_CUDA_ARCH_LIST`` (one list, to keep compile time modest). ``MAX_JOBS``
bounds the parallel compile jobs (ninja).

    pip install --no-build-isolation -e .        # torch must already be installed
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _note(message: str) -> None:
    print(f"[supermix setup] {message}", file=sys.stderr, flush=True)


def _cuda_toolchain() -> str | None:
    """CUDA_HOME if it holds nvcc, else None."""
    if CUDA_HOME is None:
        return None
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc.exe" if os.name == "nt" else "nvcc")
    return CUDA_HOME if os.path.exists(nvcc) else None


def _choose_cuda() -> bool:
    toolchain = _cuda_toolchain()
    if _flag("FORCE_CPU"):
        _note("building CPU only: FORCE_CPU=1")
        return False
    if _flag("FORCE_CUDA"):
        if toolchain is None:
            raise RuntimeError(
                "supermix setup: FORCE_CUDA=1 but no CUDA toolchain was found "
                "(set CUDA_HOME to a CUDA install with bin/nvcc)"
            )
        _note(f"building CPU+CUDA: FORCE_CUDA=1, toolchain at {toolchain}")
        return True
    if toolchain is None:
        _note("building CPU only: no CUDA toolchain found (CUDA_HOME / nvcc); FORCE_CUDA=1 to insist")
        return False
    if torch.version.cuda is None:
        _note(f"building CPU only: nvcc found at {toolchain} but this torch ({torch.__version__}) has no CUDA")
        return False
    _note(f"building CPU+CUDA: CUDA toolchain found at {toolchain}; FORCE_CPU=1 to skip it")
    return True


def _extensions() -> list:
    with_cuda = _choose_cuda()
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = [("SUPERMIX_PYTHON_MODULE", None)]
    # -g0: Python's default flags add -g, which makes the library ~10 MB of debug info.
    extra_compile_args = {"cxx": ["-O3", "-g0", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    if not with_cuda:
        return [
            CppExtension(
                "supermix_ext._C",
                sources,
                define_macros=define_macros,
                extra_compile_args=extra_compile_args,
                extra_link_args=extra_link_args,
            )
        ]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        _note(f"no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling for {DEFAULT_CUDA_ARCH_LIST}")
    else:
        _note(f"CUDA architectures: {os.environ.get('TORCH_CUDA_ARCH_LIST', 'those of the visible GPU')}")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("WITH_CUDA", None))
    # No --use_fast_math: the kernels are compared with the references to rounding.
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
    return [
        CUDAExtension(
            "supermix_ext._C",
            sources,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


packages = find_packages(where=".", include=["supermix_ext", "supermix_ext.*"])
packages += find_packages(where="python", include=["supermix", "supermix.*"])

setup(
    packages=packages,
    package_dir={"supermix": "python/supermix"},
    package_data={"supermix": ["assets/*"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
