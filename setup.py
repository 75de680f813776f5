"""Build of supermix_ext._C, the compiled kernels (C++/OpenMP, plus CUDA when a toolchain is present).

What is built is decided by the toolchain and two switches, never by a visible GPU:

- ``FORCE_CPU=1``: C++/OpenMP only.
- ``FORCE_CUDA=1``: C++ and CUDA; an error if no usable CUDA toolkit is found.
- neither: CUDA is built when a usable toolkit is found, otherwise C++ only (with a warning).

A toolkit is usable when it has ``bin/nvcc`` and the CUDA headers (``include/cuda.h`` or
``include/cuda_runtime.h``). The candidates, in order: the one torch finds (``CUDA_HOME`` /
``CUDA_PATH``, else the parent of the ``nvcc`` on PATH, which is wrong when that ``nvcc`` is a
wrapper script, e.g. /usr/local/bin/nvcc), then ``/usr/local/cuda``. The one chosen is what the
compile uses (torch's ``CUDA_HOME`` is set to it).

The wheel requires the torch minor version it was compiled against (``torch>=2.14,<2.15`` for a
build on torch 2.14.x); ``supermix_ext/_build_info.py``, written next to ``_C``, records the torch
it was built with, and ``import supermix_ext`` refuses a different torch minor version.

``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures; with no GPU visible and no list given it
defaults to ``DEFAULT_CUDA_ARCH_LIST`` (one list, to keep compile time modest). ``MAX_JOBS``
bounds the parallel compile jobs (ninja).

    pip install --no-build-isolation -e .        # torch must already be installed
"""
from __future__ import annotations

import glob
import os
import re
import sys

# setuptools 77 reads pyproject's SPDX ``license = "MIT"``; older ones fail later with a
# validation error that does not say what to install.
MIN_SETUPTOOLS = (77, 0)


def _require_build_prerequisites() -> None:
    """One line naming what to install when the build cannot start (a --no-build-isolation
    build uses the environment's setuptools and torch as they are)."""
    import setuptools

    found = tuple(int(v) for v in re.findall(r"\d+", setuptools.__version__)[:2])
    if found < MIN_SETUPTOOLS:
        sys.exit(f"supermix: the build needs setuptools>={MIN_SETUPTOOLS[0]} (found "
                 f"{setuptools.__version__}): pip install 'setuptools>={MIN_SETUPTOOLS[0]}' wheel, "
                 "then pip install --no-build-isolation .")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("supermix: the build compiles against torch, which is not installed: pip install "
                 "torch (the release to build for) first, then pip install --no-build-isolation .")


_require_build_prerequisites()

from setuptools import find_packages, setup  # noqa: E402

import torch  # noqa: E402
import torch.utils.cpp_extension as cpp_extension  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"
# Tried after the toolkit torch found (cpp_extension.CUDA_HOME) when that one is not usable.
CUDA_FALLBACK_HOMES = ("/usr/local/cuda",)
CUDA_HEADERS = ("cuda.h", "cuda_runtime.h")
BUILD_INFO = "_build_info.py"  # in the supermix_ext package, next to _C


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _note(message: str) -> None:
    print(f"[supermix setup] {message}", file=sys.stderr, flush=True)


def _toolkit_problem(home: str) -> str | None:
    """Why ``home`` is not a usable CUDA toolkit, or None if it is."""
    nvcc = os.path.join(home, "bin", "nvcc.exe" if os.name == "nt" else "nvcc")
    if not os.path.exists(nvcc):
        return f"no {nvcc}"
    if not any(os.path.exists(os.path.join(home, "include", h)) for h in CUDA_HEADERS):
        return f"no CUDA headers ({' or '.join(CUDA_HEADERS)}) in {os.path.join(home, 'include')}"
    return None


def _cuda_toolchain() -> tuple[str | None, list[str]]:
    """(the first usable CUDA toolkit or None, why each candidate before it was rejected)."""
    candidates = []
    for home in (cpp_extension.CUDA_HOME, *CUDA_FALLBACK_HOMES):
        if home and os.path.abspath(home) not in [os.path.abspath(c) for c in candidates]:
            candidates.append(home)
    rejected = []
    for home in candidates:
        problem = _toolkit_problem(home)
        if problem is None:
            return home, rejected
        rejected.append(f"{home}: {problem}")
    return None, rejected


def _use_toolkit(home: str) -> None:
    """Make torch's extension builder compile with ``home`` (its CUDA_HOME is read at import)."""
    cpp_extension.CUDA_HOME = home
    os.environ["CUDA_HOME"] = home


def _choose_cuda() -> bool:
    if _flag("FORCE_CPU"):
        _note("building CPU only: FORCE_CPU=1")
        return False
    toolchain, rejected = _cuda_toolchain()
    tried = "; ".join(rejected) or "no candidate: CUDA_HOME unset and no nvcc on PATH"
    if _flag("FORCE_CUDA"):
        if toolchain is None:
            raise RuntimeError(
                f"supermix setup: FORCE_CUDA=1 but no usable CUDA toolkit was found ({tried}); "
                "set CUDA_HOME to a CUDA install with bin/nvcc and include/cuda.h"
            )
        if rejected:
            _note(f"WARNING: skipped unusable CUDA toolkit candidates ({'; '.join(rejected)})")
        _use_toolkit(toolchain)
        _note(f"building CPU+CUDA: FORCE_CUDA=1, toolchain at {toolchain}")
        return True
    if toolchain is None:
        _note(
            f"WARNING: building CPU only: no usable CUDA toolkit found ({tried}); "
            "set CUDA_HOME to a CUDA install with bin/nvcc and include/cuda.h, FORCE_CUDA=1 to insist"
        )
        return False
    if torch.version.cuda is None:
        _note(f"building CPU only: nvcc found at {toolchain} but this torch ({torch.__version__}) has no CUDA")
        return False
    if rejected:
        _note(f"WARNING: skipped unusable CUDA toolkit candidates ({'; '.join(rejected)})")
    _use_toolkit(toolchain)
    _note(f"building CPU+CUDA: CUDA toolchain found at {toolchain}; FORCE_CPU=1 to skip it")
    return True


def _torch_minor() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if match is None:
        raise RuntimeError(f"supermix setup: cannot parse the torch version {torch.__version__!r}")
    return int(match.group(1)), int(match.group(2))


def _torch_requirement() -> str:
    """The torch minor version _C is compiled against: its C++ ABI is not stable across minors."""
    major, minor = _torch_minor()
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


class BuildExtensionWithInfo(BuildExtension):
    """BuildExtension that also writes supermix_ext/_build_info.py (the torch _C was built with)
    next to _C: in the build directory (the wheel) and, for in-place/editable builds, the source."""

    def run(self) -> None:
        super().run()
        text = (
            "# Written by setup.py when supermix_ext._C was built; checked by supermix_ext._version_check.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
        )
        targets = [os.path.join(self.build_lib, "supermix_ext", BUILD_INFO)]
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir("supermix_ext")
            targets.append(os.path.join(package_dir, BUILD_INFO))
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)


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

if __name__ == "__main__":  # pip / build run this file as __main__; the tests import its functions
    setup(
        packages=packages,
        package_dir={"supermix": "python/supermix"},
        package_data={"supermix": ["assets/*"]},
        # pyproject.toml declares dependencies dynamic: the torch pin is computed here.
        install_requires=[_torch_requirement(), "torchvision", "numpy", "safetensors", "tqdm", "matplotlib"],
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtensionWithInfo},
    )
