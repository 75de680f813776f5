"""Shared lists of devices, backends, dtypes and shapes, random op inputs and a verbose
closeness check, for the op tests and the benchmarks (as ``torch_scatter.testing``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from supermix_ext.ops import backend_info

__all__ = [
    "DEVICES", "backends_for", "IMAGE_DTYPES", "MixShape", "MIX_SHAPES",
    "SMALL_MIX_SHAPES", "GRID_SHAPES", "SIGMAS", "random_mix_inputs", "assert_close", "FP32_TOL",
    "interpreted",
]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device: str) -> list[str]:
    """Every backend usable on ``device`` on this machine (reference always)."""
    info = backend_info()
    found = ["reference"]
    if device in info["compiled_devices"]:
        found.append("cpp")
    if device in info["triton_devices"]:
        found.append("triton")
    return found


IMAGE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class MixShape:
    B: int
    k: int
    C: int
    H: int
    W: int
    h: int
    w: int

    def __str__(self) -> str:
        return f"B{self.B}k{self.k}C{self.C}_{self.H}x{self.W}_g{self.h}x{self.w}"


MIX_SHAPES = [
    MixShape(1, 2, 1, 28, 28, 7, 7),
    MixShape(3, 2, 3, 28, 28, 7, 7),
    MixShape(2, 3, 1, 13, 11, 5, 3),  # non-square grid, odd image
    MixShape(2, 4, 3, 16, 16, 8, 8),
    MixShape(5, 3, 3, 9, 9, 9, 9),  # grid as large as the image
    MixShape(1, 3, 3, 224, 224, 16, 16),
]
# Fewer, smaller shapes where every check costs a lot (float64 gradcheck, Triton interpreter).
SMALL_MIX_SHAPES = [MixShape(2, 2, 2, 6, 5, 3, 2), MixShape(1, 3, 1, 7, 7, 4, 4)]

# Planes for gaussian_smooth / newton_step: (B, k, h, w).
GRID_SHAPES = [(1, 2, 7, 7), (3, 3, 5, 3), (4, 2, 8, 8), (2, 4, 16, 16), (2, 2, 1, 1)]
SIGMAS = [0.0, 0.7, 1.0, 2.0]


def random_mix_inputs(shape: MixShape, device: str, image_dtype=torch.float32, logit_dtype=torch.float32,
                      contiguous: bool = True, seed: int = 0):
    """Fresh random images (in [0,1)) and non-zero logits; optionally as non-contiguous views."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(shape.B, shape.k, shape.C, shape.H, shape.W, generator=g, dtype=torch.float64)
    logits = 2.0 * torch.randn(shape.B, shape.k, shape.h, shape.w, generator=g, dtype=torch.float64)
    images = images.to(device=device, dtype=image_dtype)
    logits = logits.to(device=device, dtype=logit_dtype)
    if not contiguous:
        # Same values, strided storage: transpose the spatial axes of a transposed copy.
        images = images.transpose(-1, -2).contiguous().transpose(-1, -2)
        logits = logits.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not images.is_contiguous() or images.shape[-1] == 1
    return images, logits


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = "") -> None:
    """allclose that says where and by how much it failed."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    diff = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    bad = diff > bound
    bad |= torch.isnan(actual) != torch.isnan(expected)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        worst = int((diff - bound).flatten().nan_to_num(float("inf")).argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ; first at {idx}: "
            f"got {actual[idx].item():.8g}, expected {expected[idx].item():.8g}; "
            f"max abs diff {diff.max().item():.3g} (atol {atol}, rtol {rtol}) at flat index {worst}"
        )


# Tolerances of float32 kernels against a float64 reference.
FP32_TOL = dict(atol=2e-5, rtol=2e-5)


def interpreted(backend: str) -> bool:
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
