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
