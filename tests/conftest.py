"""Test session set-up.

Without a GPU the Triton kernels are tested on the CPU through Triton's interpreter, which must
be switched on before triton is first imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests choose backends explicitly; the one-time fallback warning of "auto" is tested on its own.
os.environ.pop("SUPERMIX_BACKEND", None)
torch.set_num_threads(min(2, os.cpu_count() or 1))


import pytest  # noqa: E402

from testing import FAST_PATHS  # noqa: E402

# GPU-only tests are not generated where they cannot run (a permanent skip says nothing): without
# a CUDA fast path test_cuda_device.py is not collected, and the report header says so.
HAS_CUDA_PATH = any(p.values[0] == "cuda" for p in FAST_PATHS)
collect_ignore = [] if HAS_CUDA_PATH else ["test_cuda_device.py"]


def pytest_report_header(config):
    if not HAS_CUDA_PATH:
        return "supermix: no CUDA device: tests/test_cuda_device.py not collected (benchmarks/gpu_check.sh runs it on a GPU)"


@pytest.fixture
def one_thread():
    """One intra-op thread, as the subprocesses get: on a shared 2-core machine two threads
    per process can make the teacher's convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A random ResNet-8 for 1x28x28 Fashion-MNIST (it predicts nearly one class: every mix
    'succeeds' at once, which is all the format and resume checks need)."""
    from supermix import models
    from supermix.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    net = models.create("resnet8", num_classes=10, in_channels=1)
    save_checkpoint(path, net, {"arch": "resnet8", "num_classes": 10, "in_channels": 1,
                                "data": "fashion-mnist", "input_size": [1, 28, 28]})
    return path
