"""Speed of the three ops: reference vs compiled (and Triton / CUDA on a GPU), side by side.

Run: .venv/bin/python -m pytest benchmarks/bench_ops.py --benchmark-only -q
Sizes: CIFAR (B=128, k=2, 3x32x32, 8x8 grid) and ImageNet (B=32, k=3, 3x224x224, 16x16 grid).
Each case is checked against the reference before it is timed. "saved MB" is what the forward
keeps for the backward (the fused paths keep the inputs only, never k full-resolution masks).
Targets on the 2-core CPU machine: cpp mix forward+backward >= 3x the reference, newton_step
>= 5x.
"""
from __future__ import annotations

import pytest
import torch

import supermix_ext
from benchutil import RATIOS, record
from supermix_ext.reference import mix_ref, newton_step_ref
from supermix_ext.testing import MixShape, assert_close, backends_for, random_mix_inputs

SIZES = {
    "cifar": MixShape(128, 2, 3, 32, 32, 8, 8),
    "imagenet": MixShape(32, 3, 3, 224, 224, 16, 16),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROVIDERS = [b for b in backends_for(DEVICE) if not (b == "triton" and DEVICE == "cpu")]

for size in SIZES:
    RATIOS.append((f"mix_fwd_bwd-{size}", "cpp", "reference", 3.0 if DEVICE == "cpu" else None))
    RATIOS.append((f"newton_step-{size}", "cpp", "reference", 5.0 if DEVICE == "cpu" else None))
    RATIOS.append((f"gaussian_smooth-{size}", "cpp", "reference", None))
    if "triton" in PROVIDERS:
        RATIOS.append((f"mix_fwd_bwd-{size}", "triton", "reference", None))
        RATIOS.append((f"newton_step-{size}", "triton", "reference", None))


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _saved_megabytes(fn) -> float:
    """Bytes autograd saves for the backward of ``fn()``, in MB."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total / 2**20


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_mix_forward_backward(benchmark, provider, size):
    shape = SIZES[size]
    images, logits = random_mix_inputs(shape, DEVICE, seed=1)
    grad_mixed = torch.randn(shape.B, shape.C, shape.H, shape.W, device=DEVICE)
    logits.requires_grad_()

    def run():
        mixed, sparsity = supermix_ext.mix(images, logits, backend=provider)
        (grad,) = torch.autograd.grad([mixed, sparsity], [logits], [grad_mixed, torch.ones_like(sparsity)])
        _sync()
        return mixed, grad

    mixed, grad = run()
    ref_logits = logits.detach().double().requires_grad_()
    ref_mixed, ref_sparsity = mix_ref(images.double(), ref_logits)
    (ref_grad,) = torch.autograd.grad([ref_mixed, ref_sparsity], [ref_logits],
                                      [grad_mixed.double(), torch.ones_like(ref_sparsity)])
    assert_close(mixed, ref_mixed, atol=1e-4, rtol=1e-4, what="mixed")
    assert_close(grad, ref_grad, atol=1e-4 * ref_grad.abs().max().item(), rtol=1e-3, what="grad")

    saved = _saved_megabytes(lambda: supermix_ext.mix(images, logits, backend=provider))
    benchmark.group = f"mix_fwd_bwd-{size}"
    benchmark.pedantic(run, rounds=5 if size == "imagenet" else 20, warmup_rounds=1)
    record(benchmark, benchmark.group, provider, saved_mb=saved)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_newton_step(benchmark, provider, size):
    shape = SIZES[size]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape.B, shape.k, shape.h, shape.w, generator=g).to(DEVICE)
    grad = torch.randn(shape.B, shape.k, shape.h, shape.w, generator=g).to(DEVICE)
    loss = torch.rand(shape.B, generator=g).to(DEVICE)
    active = (torch.arange(shape.B) % 4 != 0).to(DEVICE)
    sigma = 1.0 if size == "cifar" else 2.0

    def run():
        out = supermix_ext.newton_step(logits, grad, loss, active, sigma, backend=provider)
        _sync()
        return out

    assert_close(run(), newton_step_ref(logits.double(), grad.double(), loss.double(), active, sigma),
                 atol=1e-4, rtol=1e-4, what="newton_step")
    benchmark.group = f"newton_step-{size}"
    benchmark.pedantic(run, rounds=200, warmup_rounds=5)
    record(benchmark, benchmark.group, provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_gaussian_smooth(benchmark, provider, size):
    shape = SIZES[size]
    grad = torch.randn(shape.B * shape.k, shape.h, shape.w, device=DEVICE)
    sigma = 1.0 if size == "cifar" else 2.0

    def run():
        out = supermix_ext.gaussian_smooth(grad, sigma, backend=provider)
        _sync()
        return out

    from supermix_ext.reference import gaussian_smooth_ref

    assert_close(run(), gaussian_smooth_ref(grad.double(), sigma), atol=1e-5, rtol=1e-5, what="smooth")
    benchmark.group = f"gaussian_smooth-{size}"
    benchmark.pedantic(run, rounds=200, warmup_rounds=5)
    record(benchmark, benchmark.group, provider)
