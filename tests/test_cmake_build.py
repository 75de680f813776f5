"""The CMake build (libsupermix_ops for torch.ops.load_library) builds and computes the same ops.

The library is built CPU-only into a temporary directory with the cmake found next to this
Python (the venv's pip cmake) or on PATH, then exercised in a subprocess: it registers the same
`supermix` namespace as the setup.py-built supermix_ext._C already loaded in this process, and
one process cannot hold both.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MIN_CMAKE = (3, 18)

# Run in the subprocess: argv[1] is the library, argv[2] the reference module's path. The
# reference is loaded from its file, not through supermix_ext, whose import would load _C too.
CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib.util
    import sys

    import torch

    torch.ops.load_library(sys.argv[1])
    spec = importlib.util.spec_from_file_location("supermix_reference", sys.argv[2])
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ops = torch.ops.supermix
    assert ops.cuda_version() == -1, ops.cuda_version()

    # Fake kernels (shapes only) so opcheck can trace; the package registers its own in ops.py.
    @torch.library.register_fake("supermix::mix")
    def _(images, logits):
        B, k, C, H, W = images.shape
        return images.new_empty(B, C, H, W), logits.new_empty(B)

    @torch.library.register_fake("supermix::gaussian_smooth")
    def _(grad, sigma):
        return torch.empty_like(grad)

    @torch.library.register_fake("supermix::newton_step")
    def _(logits, grad, loss, active, sigma):
        return torch.empty_like(logits)

    torch.manual_seed(0)
    images = torch.rand(2, 3, 2, 9, 7)
    logits = torch.randn(2, 3, 4, 3)
    torch.library.opcheck(ops.mix, (images, logits))
    torch.library.opcheck(ops.gaussian_smooth, (torch.randn(3, 5, 4), 1.0))
    grad = torch.randn(2, 3, 4, 3)
    torch.library.opcheck(
        ops.newton_step, (logits, grad, torch.rand(2), torch.tensor([True, False]), 1.0))

    mixed, sparsity = ops.mix(images, logits)
    mixed_ref, sparsity_ref = ref.mix_ref(images, logits)
    torch.testing.assert_close(mixed, mixed_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparsity, sparsity_ref, atol=1e-6, rtol=1e-5)
    print("cmake library OK")
    """
)


def _cmake() -> str | None:
    """A cmake >= 3.18: the one installed beside this Python first, else the one on PATH."""
    candidates = [Path(sys.executable).parent / "cmake", shutil.which("cmake")]
    for candidate in candidates:
        if candidate is None or not Path(candidate).exists():
            continue
        out = subprocess.run([str(candidate), "--version"], capture_output=True, text=True).stdout
        match = re.search(r"(\d+)\.(\d+)", out)
        if match and tuple(int(g) for g in match.groups()) >= MIN_CMAKE:
            return str(candidate)
    return None


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        log = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"command failed ({result.returncode}): {' '.join(cmd)}\n{log}")


@pytest.fixture(scope="module")
def cmake_library(tmp_path_factory) -> Path:
    cmake = _cmake()
    if cmake is None:
        pytest.skip(f"no cmake >= {'.'.join(map(str, MIN_CMAKE))} (pip install 'cmake>=4')")
    build = tmp_path_factory.mktemp("cmake_build")
    _run(
        [
            cmake,
            "-S", str(ROOT),
            "-B", str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DWITH_CUDA=OFF",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ],
        cwd=build,
    )
    jobs = os.environ.get("MAX_JOBS", "2")
    _run([cmake, "--build", str(build), "-j", jobs], cwd=build)
    libraries = sorted(build.glob("libsupermix_ops.*"))
    assert libraries, f"no libsupermix_ops in {build}: {sorted(p.name for p in build.iterdir())}"
    return libraries[0]


def test_cmake_library_matches_reference(cmake_library: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, str(cmake_library), str(ROOT / "supermix_ext" / "reference.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "cmake library OK" in result.stdout
