"""The GPU kernels compile for Hopper (sm_90) and Ampere (sm_80) on a machine without a GPU.

- Triton: tests/triton_compile_only.py compiles every kernel variant the op tests use, through
  the real host launchers, with a target-only driver and compile-only launches; any compile
  error, a kernel over the architecture's shared memory, a NaN-dropping min/max in the
  Newton step's clamp, or an input that torch.compile's analysis takes for an output fails the
  test.
- CUDA: nvcc compiles csrc/cuda/*.cu for both architectures with ``-Xptxas -v``; a kernel that
  spills registers to local memory fails the test (skipped only where nvcc is absent).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension

ROOT = Path(__file__).resolve().parents[1]
ARCHS = [90, 80]
TRITON_KERNELS = {
    "_mix_fwd_kernel",
    "_mix_bwd_kernel",
    "_bilinear_adjoint_kernel",
    "_gaussian_smooth_kernel",
    "_newton_step_kernel",
}


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def triton_compiles(tmp_path_factory) -> dict[int, dict]:
    """Both architectures compiled at once, in two processes (one per core here)."""
    if not _triton_importable():
        pytest.skip("triton is not installed")
    procs = {}
    for arch in ARCHS:
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp(f"triton_cache_sm{arch}"))
        procs[arch] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "triton_compile_only.py"), str(arch)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
    results = {}
    for arch, proc in procs.items():
        out, err = proc.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"sm_{arch}: the compile script printed no result (rc {proc.returncode}):\n{err[-6000:]}"
        results[arch] = {"rc": proc.returncode, **json.loads(lines[-1])}
    return results


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_triton_kernels_compile_without_a_gpu(triton_compiles, arch):
    result = triton_compiles[arch]
    assert not result["errors"], f"sm_{arch}: {len(result['errors'])} variants failed:\n" + "\n".join(
        result["errors"][:5]
    )
    assert result["rc"] == 0
    missing = TRITON_KERNELS - set(result["compiled"])
    assert not missing, f"sm_{arch}: kernels never compiled: {sorted(missing)}"
    # torch.compile's write analysis ran on every kernel (an input it calls written is an error).
    assert set(result["written"]) == TRITON_KERNELS, result["written"]
    # max.f32 / min.f32 return the non-NaN operand: a NaN loss must give a NaN step.
    assert result["nan_dropping_minmax"]["_newton_step_kernel"] == 0, result["nan_dropping_minmax"]


# ---------------------------------------------------------------------------------- nvcc ----
def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or torch.utils.cpp_extension.CUDA_HOME or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


_FUNCTION = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(log: str) -> list[dict]:
    """Per kernel and architecture: registers, stack frame and spill bytes from ``-Xptxas -v``."""
    rows: list[dict] = []
    for line in log.splitlines():
        if match := _FUNCTION.search(line):
            rows.append({"kernel": match.group(1), "arch": match.group(2)})
        elif rows and (match := _SPILLS.search(line)):
            rows[-1].update(stack=int(match.group(1)), spill_stores=int(match.group(2)),
                            spill_loads=int(match.group(3)))
        elif rows and (match := _REGISTERS.search(line)):
            rows[-1]["registers"] = int(match.group(1))
    return rows


def _demangled(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


@pytest.fixture(scope="module")
def ptxas_rows(tmp_path_factory) -> list[dict]:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    out_dir = tmp_path_factory.mktemp("ptxas")
    includes = [f"-I{p}" for p in torch.utils.cpp_extension.include_paths()]
    includes += [f"-I{sysconfig.get_paths()['include']}", f"-I{ROOT / 'csrc'}"]
    flags = ["-std=c++20", "-O3", "-DWITH_CUDA", "--expt-relaxed-constexpr", "-Xptxas", "-v",
             "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    flags += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    procs = []
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        cmd = [nvcc, "-c", str(source), "-o", str(out_dir / f"{source.stem}.o"), *flags, *includes]
        procs.append((source.name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    rows = []
    for name, proc in procs:
        log, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"nvcc failed on {name}:\n{log[-6000:]}"
        found = ptxas_report(log)
        assert found, f"no ptxas report for {name}:\n{log[-3000:]}"
        rows += [{**row, "file": name} for row in found]
    names = _demangled([row["kernel"] for row in rows])
    for row in rows:
        row["kernel"] = names[row["kernel"]]
    return rows


def test_cuda_kernels_do_not_spill(ptxas_rows):
    for row in ptxas_rows:
        print(f"{row['file']:<26}{row['arch']:<7}{row.get('registers', '?'):>4} registers  "
              f"{row.get('spill_stores', '?')}/{row.get('spill_loads', '?')} spill stores/loads  {row['kernel']}")
    assert {row["arch"] for row in ptxas_rows} == {f"sm_{a}" for a in ARCHS}
    spilling = [row for row in ptxas_rows if row.get("spill_stores", 1) or row.get("spill_loads", 1)]
    assert not spilling, "kernels spill registers to local memory:\n" + "\n".join(
        f"{r['arch']} {r['kernel']}: {r.get('spill_stores')} B stores, {r.get('spill_loads')} B loads"
        for r in spilling
    )
