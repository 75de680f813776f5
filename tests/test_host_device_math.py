"""The per-pixel math of csrc/common.h gives the same bits on the CUDA host, the device and the CPU.

The CUDA mix backward sizes its shared-memory band of grid rows on the host and places it on
the device, both from the bilinear taps of common.h. nvcc contracts a * b - c into one FMA in
device code while host code rounds twice, so the two once disagreed at exact-integer sources
(e.g. H=25, h=3) and the kernel wrote past its shared memory. No GPU is needed to see it: the
driver tests/cpp/host_device_math.cpp is compiled twice, as the CPU build rounds (no
contraction) and as nvcc compiles device code (FMA contraction), and both builds must print the
same taps and band sizes for every 1 <= h <= H <= 512. The driver also checks the window and the
ordered gather of the deterministic backward's second pass against a plain scatter.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "cpp" / "host_device_math.cpp"
MAX_SIZE = 512
# How each build rounds: the CPU build (baseline x86-64 has no FMA) and nvcc's device code.
BUILDS = {"no_contraction": ["-ffp-contract=off"], "fma_contraction": ["-mfma", "-ffp-contract=fast"]}


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_has_fma() -> bool:
    try:
        return " fma " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def driver_outputs(tmp_path_factory) -> dict[str, str]:
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler (CXX, g++, c++ or clang++)")
    if not _cpu_has_fma():
        pytest.skip("this CPU has no FMA: the contracted build cannot run here")
    out_dir = tmp_path_factory.mktemp("host_device_math")
    includes = [f"-I{p}" for p in torch.utils.cpp_extension.include_paths()] + [f"-I{ROOT / 'csrc'}"]
    procs = {}
    for name, flags in BUILDS.items():
        binary = out_dir / name
        cmd = [compiler, "-std=c++17", "-O2", *flags, *includes, str(DRIVER), "-o", str(binary)]
        procs[name] = (binary, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = {}
    for name, (binary, proc) in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"compiling the driver ({name}) failed:\n{log[-4000:]}"
        run = subprocess.run([str(binary), str(MAX_SIZE)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"the driver ({name}) failed:\n{run.stderr[-4000:]}"
        outputs[name] = run.stdout
    return outputs


def _taps(output: str) -> dict[tuple[int, int], tuple[str, str, str, int]]:
    """(h, H) -> (float taps digest, double taps digest, naive digest, band rows)."""
    table = {}
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] == "taps":
            table[int(fields[1]), int(fields[2])] = (fields[3], fields[4], fields[5], int(fields[6]))
    return table


def _value(output: str, key: str) -> str:
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] == key:
            return fields[1]
    raise AssertionError(f"the driver printed no {key!r} line")


def test_taps_and_band_sizes_agree_with_and_without_fma(driver_outputs):
    plain = _taps(driver_outputs["no_contraction"])
    fused = _taps(driver_outputs["fma_contraction"])
    assert len(plain) == len(fused) == MAX_SIZE * (MAX_SIZE + 1) // 2
    naive_differs = [shape for shape in plain if plain[shape][2] != fused[shape][2]]
    if not naive_differs:
        pytest.skip("the compiler did not contract a * b - c with -mfma: the comparison shows nothing")
    tap_mismatches = [shape for shape in plain if plain[shape][:2] != fused[shape][:2]]
    band_mismatches = [(shape, plain[shape][3], fused[shape][3]) for shape in plain if plain[shape][3] != fused[shape][3]]
    assert not tap_mismatches, (
        f"linear_tap rounds differently with FMA contraction for {len(tap_mismatches)} (h, H) pairs, "
        f"e.g. {tap_mismatches[:5]} (of {len(naive_differs)} where plain mul-then-sub differs)"
    )
    assert not band_mismatches, f"band rows (host, device) differ: {band_mismatches[:5]}"


def test_adjoint_window_holds_every_reader_and_gather_equals_scatter(driver_outputs):
    for name, output in driver_outputs.items():
        assert int(_value(output, "window_misses")) == 0, f"{name}: adjoint_window misses readers"
        assert float(_value(output, "adjoint_error")) < 1e-12, f"{name}: gather != scatter"
