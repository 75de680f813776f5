"""Packaging: the CUDA toolkit setup.py picks, the sdist and a wheel built from it, the torch pin.

- The toolkit choice runs setup.py's own functions in a fresh subprocess (torch reads CUDA_HOME
  and PATH when torch.utils.cpp_extension is imported) with a fake ``nvcc`` script on PATH and
  CUDA_HOME unset, the case where torch guesses the wrong CUDA_HOME: nothing is compiled.
- The import check runs on a copy of supermix_ext whose build record names another torch.
- One real build (C++ only, FORCE_CPU=1): the sdist of a copy of the source tree, then
  ``pip wheel`` from that sdist; the wheel must hold _C, its build record and the assets, pin
  torch to this minor version, and import and compute from where it was unpacked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_MM = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())

# argv[1]: setup.py; argv[2]: "default" or "no-fallback" (no /usr/local/cuda to fall back to).
# Imports setup.py's functions without running setup(), then asks it for the extension.
CHOOSE_SCRIPT = textwrap.dedent(
    """
    import json, runpy, sys
    import torch.utils.cpp_extension as cpp_extension
    ns = runpy.run_path(sys.argv[1], run_name="supermix_setup")
    g = ns["_extensions"].__globals__
    if sys.argv[2] == "no-fallback":
        g["CUDA_FALLBACK_HOMES"] = ()
    result = {"torch_guess": cpp_extension.CUDA_HOME}
    try:
        ext = g["_extensions"]()[0]
    except RuntimeError as exc:
        result["error"] = str(exc)
    else:
        result["cuda"] = any(str(s).endswith(".cu") for s in ext.sources)
        result["include_dirs"] = ext.include_dirs
        result["cuda_home"] = cpp_extension.CUDA_HOME
    print("RESULT " + json.dumps(result))
    """
)


def _fake_toolkit(root: Path, headers: bool) -> Path:
    """root/bin/nvcc, a script (like a wrapper on PATH), with or without root/include/cuda.h."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda.h").write_text("/* fake */\n")
    return root


def _choose(tmp_path: Path, nvcc_root: Path, mode: str = "default", **env_extra) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_HOME", "CUDA_PATH", "FORCE_CPU", "FORCE_CUDA")}
    env["PATH"] = f"{nvcc_root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", CHOOSE_SCRIPT, str(ROOT / "setup.py"), mode],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), proc.stderr


def _usable(home: str) -> bool:
    return (Path(home) / "bin" / "nvcc").exists() and any(
        (Path(home) / "include" / h).exists() for h in ("cuda.h", "cuda_runtime.h"))


needs_cuda_torch = pytest.mark.skipif(
    torch.version.cuda is None, reason="this torch has no CUDA: setup.py never builds CUDA with it")


@needs_cuda_torch
def test_nvcc_on_path_with_headers_is_used(tmp_path):
    home = _fake_toolkit(tmp_path / "cuda", headers=True)
    result, log = _choose(tmp_path, home)
    assert result["torch_guess"] == str(home)
    assert result["cuda"] and result["cuda_home"] == str(home), (result, log)
    assert str(home / "include") in result["include_dirs"]


@needs_cuda_torch
def test_nvcc_wrapper_without_headers_falls_back_to_usr_local_cuda(tmp_path):
    """The reported failure: nvcc on PATH is a wrapper whose parent has no CUDA headers; torch
    guesses that parent as CUDA_HOME and the compile died with `cuda.h: No such file`."""
    wrapper = _fake_toolkit(tmp_path / "wrapper", headers=False)
    result, log = _choose(tmp_path, wrapper)
    assert result["torch_guess"] == str(wrapper)  # torch's guess is still the wrong one
    assert f"{wrapper}: no CUDA headers" in log
    if _usable("/usr/local/cuda"):
        assert result["cuda"] and result["cuda_home"] == "/usr/local/cuda", (result, log)
        assert "/usr/local/cuda/include" in result["include_dirs"]
        assert str(wrapper / "include") not in result["include_dirs"]
        assert "WARNING: skipped unusable CUDA toolkit" in log
    else:
        assert not result["cuda"], (result, log)
        assert "WARNING: building CPU only: no usable CUDA toolkit" in log


def test_no_usable_toolkit_builds_cpu_only_with_a_warning(tmp_path):
    wrapper = _fake_toolkit(tmp_path / "wrapper", headers=False)
    result, log = _choose(tmp_path, wrapper, "no-fallback")
    assert not result["cuda"], (result, log)
    assert not any("cuda" in d.lower() for d in result["include_dirs"]), result
    assert "WARNING: building CPU only: no usable CUDA toolkit found" in log
    if torch.version.cuda is not None:
        assert f"{wrapper}: no CUDA headers" in log


def test_force_cuda_without_usable_toolkit_fails_loudly(tmp_path):
    wrapper = _fake_toolkit(tmp_path / "wrapper", headers=False)
    result, _ = _choose(tmp_path, wrapper, "no-fallback", FORCE_CUDA="1")
    assert "FORCE_CUDA=1 but no usable CUDA toolkit was found" in result.get("error", ""), result


def test_force_cpu_ignores_the_toolkit(tmp_path):
    home = _fake_toolkit(tmp_path / "cuda", headers=True)
    result, log = _choose(tmp_path, home, FORCE_CPU="1")
    assert not result["cuda"] and "building CPU only: FORCE_CPU=1" in log


def test_torch_minor_mismatch_message():
    from supermix_ext._version_check import mismatch_message

    assert mismatch_message("2.14.0", "2.14.1+cu130") is None
    message = mismatch_message("2.13.1+cu128", "2.14.1+cu130")
    assert "2.13.1+cu128" in message and "2.14.1+cu130" in message and "\n" not in message
    assert "torch==2.13.*" in message


def _copy_package(dest: Path, built_with: str, with_library: bool) -> None:
    shutil.copytree(ROOT / "supermix_ext", dest / "supermix_ext",
                    ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__"))
    (dest / "supermix_ext" / "_build_info.py").write_text(f"TORCH_VERSION = {built_with!r}\n")
    if with_library:  # never loaded: the check comes first
        (dest / "supermix_ext" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")


def _import_copy(where: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(where))
    code = "import supermix_ext; print('FILE', supermix_ext.__file__)"
    return subprocess.run([sys.executable, "-c", code], cwd=where, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_refuses_a_library_built_for_another_torch(tmp_path):
    other = f"{TORCH_MM[0]}.{TORCH_MM[1] - 1 if TORCH_MM[1] else 99}.0"
    _copy_package(tmp_path, other, with_library=True)
    proc = _import_copy(tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: supermix_ext._C was built against torch " + other), proc.stderr
    assert f"but torch {torch.__version__} is installed" in last
    assert str(tmp_path) in proc.stderr  # the copy, not the installed package


def test_import_without_library_ignores_the_record(tmp_path):
    _copy_package(tmp_path, "1.0.0", with_library=False)
    proc = _import_copy(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"FILE {tmp_path}" in proc.stdout


def _source_files() -> list[str]:
    """What a checkout holds: tracked and untracked-but-not-ignored files."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return [p for p in out.splitlines() if (ROOT / p).is_file()]
    skip = {".venv", ".git", "build", "dist", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
            and not p.name.startswith("_C.") and p.name != "_build_info.py"
            and ".egg-info" not in str(p)]


def test_sdist_then_cpu_wheel(tmp_path):
    """One C++ build: the sdist must hold everything the build needs; the wheel built from it
    holds _C, its build record, the assets, the license, and pins torch to this minor version."""
    src = tmp_path / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "CUDA_HOME")}
    env.update(FORCE_CPU="1", MAX_JOBS=env.get("MAX_JOBS", "2"))

    # The sdist, through the PEP 517 hook that `python -m build --sdist` calls.
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, setuptools.build_meta as b; print('SDIST', b.build_sdist(sys.argv[1]))", str(dist)],
        cwd=src, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdist = dist / proc.stdout.split("SDIST ")[-1].strip()
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {"LICENSE", "README.md", "CMakeLists.txt", "setup.py", "pyproject.toml", "MANIFEST.in"}
    for pattern in ("csrc/*.h", "csrc/cpu/*.h", "csrc/cuda/*.cuh", "csrc/*.cpp", "csrc/cpu/*.cpp",
                    "csrc/cuda/*.cu", "python/supermix/assets/*"):
        found = {str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)}
        assert found, pattern
        wanted |= found
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    assert not [n for n in names if n.endswith((".so", ".pyd")) or n.endswith("_build_info.py")
                or n.startswith("tests/")]

    # The wheel, from the sdist alone (pip unpacks it in a directory of its own).
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(wheels), str(sdist)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "[supermix setup] building CPU only: FORCE_CPU=1" in proc.stdout + proc.stderr
    (wheel,) = wheels.glob("supermix-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        build_info = zf.read("supermix_ext/_build_info.py").decode()
        unpacked = tmp_path / "unpacked"
        zf.extractall(unpacked)
    assert [n for n in names if re.fullmatch(r"supermix_ext/_C\..*\.so", n)], sorted(names)
    for asset in (ROOT / "python/supermix/assets").iterdir():
        assert f"supermix/assets/{asset.name}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert f"TORCH_VERSION = {torch.__version__!r}" in build_info
    (torch_req,) = [ln for ln in metadata.splitlines() if re.match(r"Requires-Dist: torch($|[^a-z])", ln)]
    major, minor = TORCH_MM
    specifiers = {s.strip() for s in torch_req[len("Requires-Dist: torch"):].split(",")}
    assert specifiers == {f">={major}.{minor}", f"<{major}.{minor + 1}"}, torch_req
    assert "License-Expression: MIT" in metadata

    # The unpacked wheel imports (its own copy, not the installed package) and computes on _C.
    code = textwrap.dedent(
        """
        import torch, supermix_ext
        from supermix_ext import reference
        print("FILE", supermix_ext.__file__)
        assert "cpu" in supermix_ext.backend_info()["compiled_devices"], supermix_ext.backend_info()
        g = torch.randn(2, 9, 7, dtype=torch.float64)
        torch.testing.assert_close(supermix_ext.gaussian_smooth(g, 1.0, backend="cpp"),
                                   supermix_ext.gaussian_smooth(g, 1.0, backend="reference"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(unpacked)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"FILE {unpacked}" in proc.stdout


# ------------------------------------------------------------------ build prerequisites ----
def _setup_py_with_shadow(tmp_path: Path, module: str, source: str) -> subprocess.CompletedProcess:
    """Run setup.py with ``module`` replaced by ``source`` (first on the path)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / f"{module}.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=str(shadow))
    return subprocess.run([sys.executable, str(ROOT / "setup.py"), "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_too_old_setuptools_is_one_line_naming_what_to_install(tmp_path):
    proc = _setup_py_with_shadow(tmp_path, "setuptools", "__version__ = '65.5.0'\n")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == ["supermix: the build needs setuptools>=77 (found 65.5.0): pip install "
                     "'setuptools>=77' wheel, then pip install --no-build-isolation ."], proc.stderr


def test_missing_torch_is_one_line_naming_what_to_install(tmp_path):
    proc = _setup_py_with_shadow(tmp_path, "torch", "raise ImportError('No module named torch')\n")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "supermix: the build compiles against torch, which is not installed: pip install torch "
        "(the release to build for) first, then pip install --no-build-isolation ."], proc.stderr
