"""Triton newton_step: the smooth-projection Newton step of paper eq. 7, one program per sample.

Four layers: ``_newton_step_kernel``, the host launcher, the custom op
``supermix::newton_step_triton``, the public function. Smoothing, dot product, step size and
update are fused; the smoothed gradient never leaves the program except through the output
buffer it is staged in.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from ._common import check, check_device, launch, needs_int64_index, register_op
from .gaussian_smooth import _gaussian_taps, _smooth_gather, cell_block, check_sigma, taps_config

__all__ = ["newton_step_triton"]

# As reference.STEP_MIN / STEP_MAX / DENOM_EPS (the authors' released code).
_STEP_MIN = 1e-4
_STEP_MAX = 2000.0
_DENOM_EPS = 1e-10


@triton.jit
def _newton_step_kernel(
    logits_ptr,  # [B,K,h,w] float32, contiguous
    grad_ptr,  # [B,K,h,w] float32, contiguous
    loss_ptr,  # [B] float32
    active_ptr,  # [B] bool
    out_ptr,  # [B,K,h,w] float32
    K,
    h,
    w,
    R,
    neg_inv_two_sigma_sq,
    step_min,
    step_max,
    denom_eps,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    INT64: tl.constexpr,
):
    """Newton step with smooth projection (paper eq. 7) on sample b.

    sg = g_sigma * grad_b (each of the K planes smoothed separately, zero padding),
    denom = sum_{i,y,x} sg * grad_b + 1e-10, step = clamp(loss_b / denom, 1e-4, 2000),
    out_b = logits_b - step * sg if active_b else logits_b (bit for bit).
    Pass 1 stages sg in out_b and accumulates denom; pass 2 applies the step.
    """
    b = tl.program_id(0).to(tl.int64)
    hw = h * w
    n = K * hw
    if INT64:  # a sample of 2^31 cells or more
        hw = tl.cast(h, tl.int64) * w
        n = tl.cast(K, tl.int64) * hw
    base = b * n
    taps, t = _gaussian_taps(R, neg_inv_two_sigma_sq, BLOCK_T)

    dot = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(0, n, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        valid = offs < n
        plane = offs // hw
        cell = offs % hw
        sg = _smooth_gather(
            grad_ptr + base + plane * hw, cell // w, cell % w, valid, h, w, R, taps, t
        )
        g = tl.load(grad_ptr + base + offs, mask=valid, other=0.0)
        dot += sg * g
        tl.store(out_ptr + base + offs, sg, mask=valid)

    denom = tl.sum(dot, axis=0) + denom_eps
    # Comparisons rather than tl.maximum/minimum (max.f32 returns the non-NaN operand): a NaN
    # loss gives a NaN step, as torch.clamp, the reference and the CUDA kernel do.
    step = tl.load(loss_ptr + b) / denom
    step = tl.where(step < step_min, step_min, step)
    step = tl.where(step > step_max, step_max, step)
    active = tl.load(active_ptr + b) != 0
    # Pass 2 reads cells other threads staged: make their stores visible first.
    tl.debug_barrier()
    for start in range(0, n, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        valid = offs < n
        logits = tl.load(logits_ptr + base + offs, mask=valid, other=0.0)
        sg = tl.load(out_ptr + base + offs, mask=valid, other=0.0)
        tl.store(out_ptr + base + offs, tl.where(active, logits - step * sg, logits), mask=valid)


def _newton_step(logits: Tensor, grad: Tensor, loss: Tensor, active: Tensor, sigma: float) -> Tensor:
    op = "newton_step_triton"
    check(logits.dim() == 4, f"supermix::{op}: logits must be [B,k,h,w], got shape {tuple(logits.shape)}")
    check(
        grad.shape == logits.shape,
        f"supermix::{op}: grad must have logits' shape {tuple(logits.shape)}, got {tuple(grad.shape)}",
    )
    B = logits.shape[0]
    check(tuple(loss.shape) == (B,), f"supermix::{op}: loss must be [{B}], got {tuple(loss.shape)}")
    check(tuple(active.shape) == (B,), f"supermix::{op}: active must be [{B}], got {tuple(active.shape)}")
    check(logits.dtype == torch.float32, f"supermix::{op}: logits must be float32, got {logits.dtype}")
    check(grad.dtype == torch.float32, f"supermix::{op}: grad must be float32, got {grad.dtype}")
    check(active.dtype == torch.bool, f"supermix::{op}: active must be bool, got {active.dtype}")
    check_sigma(op, sigma)
    check_device(logits, "logits", op)
    logits = logits.contiguous()
    grad = grad.contiguous()
    loss = loss.to(torch.float32).contiguous()
    active = active.contiguous()
    _, k, h, w = logits.shape
    out = torch.empty_like(logits)
    if logits.numel() == 0:
        return out
    radius, coef, block_t = taps_config(sigma)
    block_p, num_warps = cell_block(k * h * w, block_t)
    launch(
        _newton_step_kernel, (B,), logits.device, op,
        logits, grad, loss, active, out,
        k, h, w, radius, coef, _STEP_MIN, _STEP_MAX, _DENOM_EPS,
        BLOCK_T=block_t, BLOCK_P=block_p, INT64=needs_int64_index(logits.numel()), num_warps=num_warps,
    )  # fmt: skip
    return out


def _newton_step_fake(logits: Tensor, grad: Tensor, loss: Tensor, active: Tensor, sigma: float) -> Tensor:
    check_sigma("newton_step_triton", sigma)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@register_op("supermix::newton_step_triton", _newton_step_fake)
def _newton_step_op(logits: Tensor, grad: Tensor, loss: Tensor, active: Tensor, sigma: float) -> Tensor:
    return _newton_step(logits, grad, loss, active, sigma)


def newton_step_triton(
    logits: Tensor, grad: Tensor, loss: Tensor, active: Tensor, sigma: float
) -> Tensor:
    """Newton step with smooth projection (Triton), as ``reference.newton_step_ref``.

    Args:
        logits: [B,k,h,w] float32.
        grad: [B,k,h,w] float32, gradient of the per-sample loss with respect to the logits.
        loss: [B] per-sample loss.
        active: [B] bool; inactive samples are copied bit for bit.
        sigma: Gaussian standard deviation in grid cells, finite, >= 0.

    Returns:
        [B,k,h,w] float32 new logits (a new tensor).
    """
    return torch.ops.supermix.newton_step_triton(logits, grad, loss, active, float(sigma))
