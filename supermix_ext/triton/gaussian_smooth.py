"""Triton gaussian_smooth: the separable Gaussian g_sigma * (.) of paper eq. 7 on mask grids.

Four layers: ``_gaussian_smooth_kernel`` (with the jit helpers ``newton_step`` reuses), the host
launcher, the custom op ``supermix::gaussian_smooth_triton``, the public function. The grid is
one-dimensional (planes x cell blocks on axis 0) and offsets are int64 when the tensor has more
than 2^31 - 1 elements (``smooth_launch_plan``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from ._common import INTERPRETED, check, check_device, launch, needs_int64_index, register_op

__all__ = ["SmoothLaunchPlan", "gaussian_smooth_triton", "smooth_launch_plan"]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _gaussian_taps(R, neg_inv_two_sigma_sq, BLOCK_T: tl.constexpr):
    """Taps at offsets t - R, t = 0..2R: exp(-(t-R)^2 / (2 sigma^2)) normalised to sum 1.

    Computed in float32 in the kernel; they differ from ``reference.gaussian_taps`` (float64,
    rounded once) by a few ulp. R = 0 needs ``neg_inv_two_sigma_sq = 0`` and gives [1].
    Returns (taps [BLOCK_T] float32, zero past 2R; t = arange(BLOCK_T)).
    """
    t = tl.arange(0, BLOCK_T)
    d = (t - R).to(tl.float32)
    taps = tl.where(t <= 2 * R, tl.exp(d * d * neg_inv_two_sigma_sq), 0.0)
    return taps / tl.sum(taps, axis=0), t


@triton.jit
def _smooth_gather(plane_ptr, y, x, valid, h, w, R, taps, t):
    """Gaussian smoothing at pixels (y, x) of the [h,w] planes starting at ``plane_ptr``.

    out(y, x) = sum_dy taps[dy] * (sum_dx taps[dx] * g(y + dy - R, x + dx - R)), g = 0 outside
    the plane: the rows-then-columns separable filter evaluated directly, each row sum as one
    [BLOCK_T, BLOCK_P] gather. ``plane_ptr`` is a pointer or a [BLOCK_P] block of pointers.
    """
    xx = x[None, :] + t[:, None] - R
    x_ok = (xx >= 0) & (xx < w) & (t[:, None] <= 2 * R) & valid[None, :]
    acc = tl.zeros(y.shape, dtype=tl.float32)
    for dy in range(0, 2 * R + 1):
        yy = y + (dy - R)
        ok = x_ok & ((yy >= 0) & (yy < h))[None, :]
        vals = tl.load((plane_ptr + yy * w)[None, :] + xx, mask=ok, other=0.0)
        row = tl.sum(taps[:, None] * vals, axis=0)
        tap_dy = tl.sum(tl.where(t == dy, taps, 0.0), axis=0)
        acc += tap_dy * row
    return acc


@triton.jit
def _gaussian_smooth_kernel(
    grad_ptr,  # [N,h,w] float32, contiguous
    out_ptr,  # [N,h,w] float32
    h,
    w,
    R,
    neg_inv_two_sigma_sq,
    num_blocks,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    INT64: tl.constexpr,
):
    """Separable Gaussian smoothing of a block of BLOCK_P cells of plane n.

    out_n(y, x) = sum_{a,b=-R..R} g(a) g(b) grad_n(y + a, x + b), zero padding,
    g(t) = exp(-t^2 / (2 sigma^2)) / sum_t' exp(-t'^2 / (2 sigma^2)), R = floor(2.5 sigma).
    Program id = n * num_blocks + block.
    """
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    n = pid // num_blocks
    pid_p = pid % num_blocks
    hw = h * w
    if INT64:
        hw = tl.cast(h, tl.int64) * w
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = offs < hw
    y = offs // w
    x = offs % w
    taps, t = _gaussian_taps(R, neg_inv_two_sigma_sq, BLOCK_T)
    out = _smooth_gather(grad_ptr + n * hw, y, x, valid, h, w, R, taps, t)
    tl.store(out_ptr + n * hw + offs, out, mask=valid)


# --------------------------------------------------------------------------------------------
# Host launcher
# --------------------------------------------------------------------------------------------
def check_sigma(op: str, sigma: float) -> None:
    check(math.isfinite(sigma) and sigma >= 0, f"supermix::{op}: sigma must be finite and >= 0, got {sigma}")


def taps_config(sigma: float) -> tuple[int, float, int]:
    """(R, -1 / (2 sigma^2) or 0 when R = 0, BLOCK_T) for the kernels' ``_gaussian_taps``."""
    radius = math.floor(2.5 * sigma)
    coef = -1.0 / (2.0 * sigma * sigma) if radius > 0 else 0.0
    return radius, coef, triton.next_power_of_2(2 * radius + 1)


def cell_block(n: int, block_t: int) -> tuple[int, int]:
    """(BLOCK_P, num_warps): cells per program, so that a [BLOCK_T, BLOCK_P] gather stays small."""
    max_tile = 16384 if INTERPRETED else 4096
    block_p = min(triton.next_power_of_2(n), max(16, max_tile // block_t))
    return block_p, 4 if block_t * block_p <= 2048 else 8


@dataclass(frozen=True)
class SmoothLaunchPlan:
    """How ``gaussian_smooth_triton`` launches on [N,h,w]: ``num_blocks`` programs of ``block_p``
    cells per plane on a 1-D grid of ``grid`` programs, int64 offsets past 2^31 - 1 elements."""

    radius: int
    coef: float
    block_t: int
    block_p: int
    num_warps: int
    num_blocks: int
    grid: tuple[int]
    int64_index: bool


def smooth_launch_plan(N: int, h: int, w: int, sigma: float) -> SmoothLaunchPlan:
    """The launch parameters of ``gaussian_smooth_triton`` (the launcher uses exactly this)."""
    radius, coef, block_t = taps_config(sigma)
    block_p, num_warps = cell_block(h * w, block_t)
    num_blocks = triton.cdiv(h * w, block_p)
    return SmoothLaunchPlan(
        radius=radius,
        coef=coef,
        block_t=block_t,
        block_p=block_p,
        num_warps=num_warps,
        num_blocks=num_blocks,
        grid=(N * num_blocks,),
        int64_index=needs_int64_index(N * h * w),
    )


def _gaussian_smooth(grad: Tensor, sigma: float) -> Tensor:
    op = "gaussian_smooth_triton"
    check(grad.dim() == 3, f"supermix::{op}: grad must be [N,h,w], got shape {tuple(grad.shape)}")
    check(grad.dtype == torch.float32, f"supermix::{op}: grad must be float32, got {grad.dtype}")
    check_sigma(op, sigma)
    check_device(grad, "grad", op)
    if math.floor(2.5 * sigma) == 0:  # one tap of weight 1: the identity, bit for bit
        return grad.clone(memory_format=torch.contiguous_format)
    grad = grad.contiguous()
    N, h, w = grad.shape
    out = torch.empty_like(grad)
    if grad.numel() == 0:
        return out
    plan = smooth_launch_plan(N, h, w, sigma)
    launch(
        _gaussian_smooth_kernel, plan.grid, grad.device, op,
        grad, out, h, w, plan.radius, plan.coef, plan.num_blocks,
        BLOCK_T=plan.block_t, BLOCK_P=plan.block_p, INT64=plan.int64_index, num_warps=plan.num_warps,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Custom op and public function
# --------------------------------------------------------------------------------------------
def _gaussian_smooth_fake(grad: Tensor, sigma: float) -> Tensor:
    check_sigma("gaussian_smooth_triton", sigma)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


@register_op("supermix::gaussian_smooth_triton", _gaussian_smooth_fake)
def _gaussian_smooth_op(grad: Tensor, sigma: float) -> Tensor:
    return _gaussian_smooth(grad, sigma)


def gaussian_smooth_triton(grad: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing (Triton), as ``reference.gaussian_smooth_ref``.

    Args:
        grad: [N,h,w] float32.
        sigma: standard deviation in grid cells, finite, >= 0 (0 is the identity).

    Returns:
        [N,h,w] float32, contiguous.
    """
    return torch.ops.supermix.gaussian_smooth_triton(grad, float(sigma))
