"""The tests' one helper module: the op lists and checks of :mod:`supermix_ext.testing` (as
pytest parameters too), the subprocess environment, and the training-command helpers (tiny
teachers and generated sets, running ``supermix`` in-process, as a subprocess or under
``torchrun`` with 2 CPU processes, reading logs and weights)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supermix_ext.testing import (DEVICES, FP32_TOL, GRID_SHAPES, IMAGE_DTYPES, MIX_SHAPES,
                                  SIGMAS, SMALL_MIX_SHAPES, MixShape, assert_close,
                                  backends_for, interpreted, random_mix_inputs)

__all__ = [
    "DEVICES", "FP32_TOL", "GRID_SHAPES", "IMAGE_DTYPES", "MIX_SHAPES", "SIGMAS",
    "SMALL_MIX_SHAPES", "MixShape", "assert_close", "backends_for", "interpreted",
    "random_mix_inputs", "FAST_PATHS", "REPO", "ROOT", "subprocess_env", "TINY", "run_cli",
    "run_torchrun", "run_main", "make_teacher", "make_generated", "read_log", "epochs",
    "TIMING_KEYS", "without_timing", "state_dict", "max_abs_diff", "assert_one_line_error",
    "assert_same_step", "shipped_teacher_and_test_images", "hand_mixed_labels",
]

REPO = ROOT = Path(__file__).resolve().parents[1]

# (device, backend) pairs of fast paths to test against the reference.
FAST_PATHS = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_for(device)
    if backend != "reference"
]


def subprocess_env() -> dict:
    """Environment for ``python -m supermix`` subprocesses: the repo on PYTHONPATH, one thread
    per process (light on a shared machine, and the same float reductions in single-process and
    torchrun runs that are compared byte for byte), no backend override."""
    env = dict(os.environ)
    paths = [str(REPO / "python"), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("SUPERMIX_BACKEND", None)
    return env


# A few hundred images, small batches: every run here takes a second or two on one core.
TINY = ["--limit-train", "256", "--limit-test", "200", "--batch-size", "64", "--no-progress"]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m supermix ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "supermix", *args], capture_output=True,
                          text=True, env=subprocess_env(), cwd=ROOT, timeout=timeout)


def run_torchrun(args: list[str], nproc: int = 2, timeout: float = 300
                 ) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m supermix ARGS`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "supermix", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
                          timeout=timeout)


def run_main(args: list[str]) -> int:
    """``supermix ARGS`` in this process (data sets stay cached between calls)."""
    from supermix.commands.cli import main

    return main(args)


def make_teacher(path: Path, num_classes: int = 10, arch: str = "resnet8",
                 data: str = "fashion-mnist") -> Path:
    """A randomly initialised teacher checkpoint for Fashion-MNIST's 1x28x28 images."""
    from supermix import models
    from supermix.checkpoint import save_checkpoint

    torch.manual_seed(123)
    net = models.create(arch, num_classes=num_classes, in_channels=1)
    save_checkpoint(path, net, {"arch": arch, "num_classes": num_classes, "in_channels": 1,
                                "data": data, "input_size": [1, 28, 28], "mean": [0.286],
                                "std": [0.353]})
    return path


def make_generated(out: Path, teacher: Path, size: int = 160, mixer: str = "mixup") -> Path:
    """A small set written by ``supermix generate`` (in-process)."""
    from supermix.generation import generate

    generate(out, size, teacher=teacher, mixer=mixer, shard_size=64, batch_size=64,
             device="cpu", progress=False, log=lambda msg: None)
    return out


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def epochs(out: Path) -> list[dict]:
    return [r for r in read_log(out) if r["event"] == "epoch"]


TIMING_KEYS = ("train_s", "epoch_s", "elapsed_s")


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Largest elementwise difference over two state dicts, and where it is."""
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    worst, where = 0.0, ""
    for k in a:
        d = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        if d > worst:
            worst, where = d, k
    return worst, where


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one ``supermix: error:`` line on stderr naming ``fragments``."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("supermix: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_same_step(one: Path, two: Path, arch: str = "resnet8", seed: int = 0,
                     in_channels: int = 1) -> None:
    """The weights of two runs after one SGD step from the same seeded initialisation agree up
    to float rounding (reductions in another order and thread count): far below the step
    itself, which a missing SyncBatchNorm or a wrong gradient average would change by a
    sizeable fraction."""
    from supermix import models

    torch.manual_seed(seed)
    init = models.create(arch, num_classes=10, in_channels=in_channels).state_dict()
    one_w, two_w = state_dict(one / "model.pt"), state_dict(two / "model.pt")
    step, _ = max_abs_diff(one_w, init)
    worst, where = max_abs_diff(one_w, two_w)
    assert step > 1e-2, f"the step is too small to compare ({step})"
    assert worst < 1e-4 and worst < 1e-3 * step, (
        f"2-process weights differ by {worst} at {where} (step {step})")


@functools.lru_cache(maxsize=1)
def shipped_teacher_and_test_images():
    """(teacher, images, labels): the shipped ResNet-20 and the normalised Fashion-MNIST test
    set; the calling test is skipped when the teacher file is missing."""
    from supermix import data
    from supermix.teachers import default_teacher_path, load_teacher

    path = default_teacher_path()
    if not path.exists():
        pytest.skip(f"the shipped teacher {path} is missing")
    images, labels = data.load_tensors("fashion-mnist", train=False)
    return load_teacher(path), images, labels


def hand_mixed_labels(sources, weights, y, num_classes: int) -> torch.Tensor:
    """The mixers' target label sum_i w_i y_{sources_i} row by row in plain Python loops (the
    oracle of the label tests); y int [B] or soft [B,n]; float64 [B', num_classes]."""
    out = torch.zeros(sources.shape[0], num_classes, dtype=torch.float64)
    for b in range(sources.shape[0]):
        for i in range(sources.shape[1]):
            s = int(sources[b, i])
            if y.dim() == 1:
                out[b, int(y[s])] += float(weights[b, i])
            else:
                out[b] += float(weights[b, i]) * y[s].double()
    return out
