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
