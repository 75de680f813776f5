"""Triton mix: the fused forward and backward of SuperMix's mask mixing (paper eq. 1, 4, 5).

Four layers: the ``@triton.jit`` kernels, the host launchers (block sizes, grids, buffers), the
custom ops ``supermix::mix_triton`` / ``supermix::mix_backward_triton``, and the public
functions. Autograd is not registered here: ``supermix_ext.ops`` ties the two ops together.

Neither direction materialises the k full-resolution masks: one program owns a block of output
pixels of one sample and recomputes the masks of its pixels from the h x w logits. The forward is
deterministic (per-program partial sparsities, summed in a fixed order). The backward reduces
onto the h x w grid with float atomics by default; with ``deterministic=True`` (or under
``torch.use_deterministic_algorithms``) each pixel stores dL/dz_i (k floats per pixel) and a
second kernel gathers every grid cell in a fixed order, so repeated runs are bit-identical.

Grids are one-dimensional (2^31 - 1 programs, not 65535) and offsets switch to int64 when a
tensor has more than 2^31 - 1 elements (``mix_launch_plan``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from ._common import INTERPRETED, check, check_device, launch, needs_int64_index, register_op

__all__ = ["MixLaunchPlan", "mix_backward_triton", "mix_launch_plan", "mix_triton"]

_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _round_to_bf16(x):
    """float32 -> bfloat16, round to nearest even, by integer arithmetic.

    Used under the interpreter only: its own float32 -> bfloat16 cast truncates (GPUs round to
    nearest even, as torch does).
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a quiet NaN
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _cast_for_store(x, dtype: tl.constexpr, MANUAL_BF16: tl.constexpr):
    """float32 ``x`` in the output dtype; ``MANUAL_BF16`` rounds bfloat16 by hand."""
    if MANUAL_BF16:
        return _round_to_bf16(x)
    else:
        return x.to(dtype)


@triton.jit
def _index(x, INT64: tl.constexpr):
    """``x`` as int64 when the launch needs 64-bit offsets, else unchanged."""
    if INT64:
        return tl.cast(x, tl.int64)
    else:
        return x


@triton.jit
def _source_index(dst, scale, in_size):
    """Bilinear source cells and weights of output indices ``dst`` (align_corners=False).

    As ATen's upsample_bilinear2d: src = max(scale * (dst + 0.5) - 0.5, 0), scale = in/out,
    i0 = floor(src) (at most in_size - 1), i1 = i0 + (i0 < in_size - 1), l1 = src - i0,
    l0 = 1 - l1. Returns (i0, i1, l0, l1). src is one explicit FMA (as csrc/common.h), so the
    two passes of the deterministic backward round it alike whatever the compiler fuses.
    """
    src = tl.fma(scale, dst.to(tl.float32) + 0.5, -0.5)
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)  # src >= 0: truncation is floor
    l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _mask_tile(logits_ptr, ks, kmask, pmask, h, w, y0, y1, ly0, ly1, x0, x1, lx0, lx1):
    """Sigmoids and normalised masks of a [BLOCK_K, BLOCK_P] tile (sources x pixels).

    z_i(u) = bilinear upsample of logits_i at u, s_i = sigmoid(z_i), m_i = s_i / sum_j s_j.
    Rows i >= K and masked pixels hold s = m = 0. ``logits_ptr`` points at the sample's
    [K,h,w] block; (y0, y1, ly0, ly1) and (x0, x1, lx0, lx1) are ``_source_index`` of the
    tile's rows and columns. The caller computes those, not this function: torch.compile's
    analysis of which arguments a kernel writes follows a call's results back to all of its
    arguments, so the backward's atomics at cells returned from a call that reads
    ``logits_ptr`` would mark the logits as written (torch 2.11). Returns (s, m).
    """
    mask = kmask[:, None] & pmask[None, :]
    plane = logits_ptr + ks[:, None] * (h * w)
    v00 = tl.load(plane + (y0 * w + x0)[None, :], mask=mask, other=0.0)
    v01 = tl.load(plane + (y0 * w + x1)[None, :], mask=mask, other=0.0)
    v10 = tl.load(plane + (y1 * w + x0)[None, :], mask=mask, other=0.0)
    v11 = tl.load(plane + (y1 * w + x1)[None, :], mask=mask, other=0.0)
    # Same grouping as ATen: h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d).
    z = ly0[None, :] * (lx0[None, :] * v00 + lx1[None, :] * v01) + ly1[None, :] * (
        lx0[None, :] * v10 + lx1[None, :] * v11
    )
    s = tl.where(mask, 1.0 / (1.0 + tl.exp(-z)), 0.0)
    total = tl.sum(s, axis=0)
    total = tl.where(pmask, total, 1.0)  # padded pixels: avoid 0 / 0
    m = s / total[None, :]
    return s, m


@triton.jit
def _mix_fwd_kernel(
    images_ptr,  # [B,K,C,H,W] float32 / float16 / bfloat16, contiguous
    logits_ptr,  # [B,K,h,w] float32, contiguous
    mixed_ptr,  # [B,C,H,W] images' dtype
    partial_ptr,  # [B, num_blocks] float32: per-program sums of |m (m - 1)|
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    num_blocks,
    K: tl.constexpr,
    C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
    INT64: tl.constexpr,
):
    """Fused SuperMix forward over one block of BLOCK_P pixels u of sample b.

    z_i(u) = bilinear(logits_i)(u)  (align_corners=False),  s_i = sigmoid(z_i),
    m_i = s_i / sum_j s_j,          mixed_c(u) = sum_i m_i(u) x_ic(u),
    partial[b, block] = sum_{i, u in block} |m_i(u) (m_i(u) - 1)|
    (the launcher divides the row sum of ``partial`` by K*H*W: sparsity, paper eq. 5).
    Images are read in their dtype and accumulated in float32. Program id = b * num_blocks + block.
    """
    pid = _index(tl.program_id(0), INT64)
    b = pid // num_blocks
    pid_p = pid % num_blocks
    HW = _index(H, INT64) * W
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs < HW
    y = offs // W
    x = offs % W
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    mask = kmask[:, None] & pmask[None, :]

    y0, y1, ly0, ly1 = _source_index(y, scale_h, h)
    x0, x1, lx0, lx1 = _source_index(x, scale_w, w)
    s, m = _mask_tile(
        logits_ptr + b * (K * h * w), ks, kmask, pmask, h, w, y0, y1, ly0, ly1, x0, x1, lx0, lx1
    )

    image_rows = images_ptr + b * (K * C * HW) + ks[:, None] * (C * HW) + offs[None, :]
    mixed_row = mixed_ptr + b * (C * HW) + offs
    for c in tl.static_range(C):
        xc = tl.load(image_rows + c * HW, mask=mask, other=0.0).to(tl.float32)
        mixed = tl.sum(m * xc, axis=0)
        mixed = _cast_for_store(mixed, mixed_ptr.dtype.element_ty, MANUAL_BF16)
        tl.store(mixed_row + c * HW, mixed, mask=pmask)

    sparse = tl.where(mask, tl.abs(m * (m - 1.0)), 0.0)
    tl.store(partial_ptr + b * num_blocks + pid_p, tl.sum(tl.sum(sparse, axis=1), axis=0))


@triton.jit
def _mix_bwd_kernel(
    grad_mixed_ptr,  # [B,C,H,W] any float dtype, contiguous
    grad_sparsity_ptr,  # [B] float32
    images_ptr,  # [B,K,C,H,W]
    logits_ptr,  # [B,K,h,w] float32
    grad_images_ptr,  # [B,K,C,H,W] images' dtype (unused unless NEED_IMAGES_GRAD)
    grad_logits_ptr,  # [B,K,h,w] float32, zero-initialised, accumulated with atomics (not ORDERED)
    dz_ptr,  # [B,K,H,W] float32: dL/dz_i per pixel (ORDERED only)
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    num_blocks,
    K: tl.constexpr,
    C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    NEED_IMAGES_GRAD: tl.constexpr,
    MANUAL_BF16: tl.constexpr,
    ORDERED: tl.constexpr,
    INT64: tl.constexpr,
):
    """Fused SuperMix backward over one block of BLOCK_P pixels u of sample b.

    With gm = grad_mixed, gs = grad_sparsity[b], N = K*H*W:
      G_i(u)  = sum_c gm_c(u) x_ic(u) + gs * sign(m_i (m_i - 1)) * (2 m_i - 1) / N
      Gbar(u) = sum_i m_i G_i
      dz_i(u) = m_i (1 - s_i) (G_i - Gbar)                (through m = s / sum s, s = sigmoid z)
      grad_images_ic(u) = gm_c(u) m_i(u)
    Not ORDERED: grad_logits_i += adjoint of the bilinear upsample of dz_i, dz_i(u) * l_y l_x
    added atomically to the 4 source cells (y0|y1, x0|x1) of u (both weights land on one cell at
    the border, where y0 == y1). ORDERED: dz_i(u) is stored for ``_bilinear_adjoint_kernel``.
    """
    pid = _index(tl.program_id(0), INT64)
    b = pid // num_blocks
    pid_p = pid % num_blocks
    HW = _index(H, INT64) * W
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs < HW
    y = offs // W
    x = offs % W
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    mask = kmask[:, None] & pmask[None, :]

    y0, y1, ly0, ly1 = _source_index(y, scale_h, h)
    x0, x1, lx0, lx1 = _source_index(x, scale_w, w)
    s, m = _mask_tile(
        logits_ptr + b * (K * h * w), ks, kmask, pmask, h, w, y0, y1, ly0, ly1, x0, x1, lx0, lx1
    )

    image_rows = images_ptr + b * (K * C * HW) + ks[:, None] * (C * HW) + offs[None, :]
    grad_image_rows = grad_images_ptr + b * (K * C * HW) + ks[:, None] * (C * HW) + offs[None, :]
    grad_mixed_row = grad_mixed_ptr + b * (C * HW) + offs
    G = tl.zeros([BLOCK_K, BLOCK_P], dtype=tl.float32)
    for c in tl.static_range(C):
        gm = tl.load(grad_mixed_row + c * HW, mask=pmask, other=0.0).to(tl.float32)
        xc = tl.load(image_rows + c * HW, mask=mask, other=0.0).to(tl.float32)
        G += gm[None, :] * xc
        if NEED_IMAGES_GRAD:
            grad_xc = gm[None, :] * m
            tl.store(
                grad_image_rows + c * HW,
                _cast_for_store(grad_xc, grad_images_ptr.dtype.element_ty, MANUAL_BF16),
                mask=mask,
            )

    # d/dm of mean |m (m - 1)|: sign(p) (2m - 1) / N; sign(0) = 0 as torch.abs's backward.
    gs = tl.load(grad_sparsity_ptr + b) / (K * HW * 1.0)
    p = m * (m - 1.0)
    sign = tl.where(p > 0.0, 1.0, tl.where(p < 0.0, -1.0, 0.0))
    G += gs * sign * (2.0 * m - 1.0)

    g_bar = tl.sum(m * G, axis=0)
    dz = tl.where(mask, m * (1.0 - s) * (G - g_bar[None, :]), 0.0)

    if ORDERED:
        tl.store(dz_ptr + b * (K * HW) + ks[:, None] * HW + offs[None, :], dz, mask=mask)
    else:
        # Relaxed atomics: nothing reads grad_logits before the kernel ends.
        gl = grad_logits_ptr + b * (K * h * w) + ks[:, None] * (h * w)
        tl.atomic_add(gl + (y0 * w + x0)[None, :], dz * (ly0 * lx0)[None, :], mask=mask, sem="relaxed")
        tl.atomic_add(gl + (y0 * w + x1)[None, :], dz * (ly0 * lx1)[None, :], mask=mask, sem="relaxed")
        tl.atomic_add(gl + (y1 * w + x0)[None, :], dz * (ly1 * lx0)[None, :], mask=mask, sem="relaxed")
        tl.atomic_add(gl + (y1 * w + x1)[None, :], dz * (ly1 * lx1)[None, :], mask=mask, sem="relaxed")


@triton.jit
def _adjoint_window(g, in_size, out_size):
    """Output coordinates [begin, end) that can read grid cell ``g`` (csrc/common.h
    ``adjoint_window``): (2g - 1) out - in <= 2 in x < (2g + 3) out - in, one coordinate of
    slack each side, from 0 for g <= 1 (where src is clamped to 0, x reads cell 1 with weight 0).
    """
    low = (2 * g - 1) * out_size - in_size
    high = (2 * g + 3) * out_size - in_size
    first = tl.where((g <= 1) | (low < 0), 0, low // (2 * in_size) - 1)
    return tl.maximum(first, 0), tl.minimum(high // (2 * in_size) + 2, out_size)


@triton.jit
def _bilinear_adjoint_kernel(
    dz_ptr,  # [P,H,W] float32 (P = B*K planes)
    grad_logits_ptr,  # [P,h,w] float32
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    num_blocks,
    window_y,
    window_x,
    BLOCK_X: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
):
    """The deterministic second pass of the backward, over BLOCK_C grid cells of one plane.

    grad_logits[p, gy, gx] = sum_y l_y(y -> gy) * (sum_x l_x(x -> gx) * dz[p, y, x]) over the
    output pixels that read the cell (its window: at most ``window_y`` rows and ``window_x``
    columns), rows in order, the columns of a row in chunks of BLOCK_X, each chunk by one
    fixed-shape reduction. Program id = plane * num_blocks + block.
    """
    pid = _index(tl.program_id(0), INT64)
    plane = pid // num_blocks
    cells = (pid % num_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cells < h * w
    gy = cells // w
    gx = cells % w
    y_begin, y_end = _adjoint_window(gy, h, H)
    x_begin, x_end = _adjoint_window(gx, w, W)
    plane_ptr = dz_ptr + plane * (_index(H, INT64) * W)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for dy in range(0, window_y):
        y = y_begin + dy
        y0, y1, ly0, ly1 = _source_index(y, scale_h, h)
        y_reads = ((y0 == gy) | (y1 == gy)) & (y < y_end) & cmask
        wy = tl.where(y0 == gy, ly0, 0.0) + tl.where(y1 == gy, ly1, 0.0)
        row = tl.zeros([BLOCK_C], dtype=tl.float32)
        for dx in range(0, window_x, BLOCK_X):
            xs = x_begin[:, None] + dx + tl.arange(0, BLOCK_X)[None, :]
            x0, x1, lx0, lx1 = _source_index(xs, scale_w, w)
            reads = (x0 == gx[:, None]) | (x1 == gx[:, None])
            reads = reads & (xs < x_end[:, None]) & y_reads[:, None]
            wx = tl.where(x0 == gx[:, None], lx0, 0.0) + tl.where(x1 == gx[:, None], lx1, 0.0)
            vals = tl.load(plane_ptr + (y * W)[:, None] + xs, mask=reads, other=0.0)
            row += tl.sum(tl.where(reads, wx * vals, 0.0), axis=1)
        acc += tl.where(y_reads, wy * row, 0.0)
    tl.store(grad_logits_ptr + plane * (h * w) + cells, acc, mask=cmask)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------
def _check_mix_args(op: str, images: Tensor, logits: Tensor) -> None:
    check(images.dim() == 5, f"supermix::{op}: images must be [B,k,C,H,W], got shape {tuple(images.shape)}")
    check(logits.dim() == 4, f"supermix::{op}: logits must be [B,k,h,w], got shape {tuple(logits.shape)}")
    B, k, _, H, W = images.shape
    check(
        tuple(logits.shape[:2]) == (B, k),
        f"supermix::{op}: logits must be [B,k,h,w] = [{B},{k},h,w] to match images, "
        f"got {tuple(logits.shape)}",
    )
    check(k >= 2, f"supermix::{op}: k (images.shape[1]) must be >= 2, got {k}")
    h, w = logits.shape[2:]
    check(
        1 <= h <= H and 1 <= w <= W,
        f"supermix::{op}: logits grid h x w must be within 1..H x 1..W = {H} x {W}, got {h} x {w}",
    )
    check(
        images.dtype in _IMAGE_DTYPES,
        f"supermix::{op}: images must be float32, float16 or bfloat16, got {images.dtype}",
    )
    check(logits.dtype == torch.float32, f"supermix::{op}: logits must be float32, got {logits.dtype}")
    check(
        images.device == logits.device,
        f"supermix::{op}: images and logits must be on one device, got {images.device} and {logits.device}",
    )
    check_device(images, "images", op)


@dataclass(frozen=True)
class MixLaunchPlan:
    """How the mix kernels are launched for one shape: a [BLOCK_K, BLOCK_P] tile of sources x
    pixels per program, ``num_blocks`` programs per sample on a 1-D grid of ``grid`` programs,
    int64 offsets when a tensor exceeds 2^31 - 1 elements. The deterministic backward's gather
    pass: ``gather_grid`` programs of ``block_c`` cells, windows of ``window_y`` x ``window_x``
    pixels read ``block_x`` columns at a time."""

    block_k: int
    block_p: int
    num_warps: int
    num_blocks: int
    grid: tuple[int]
    int64_index: bool
    block_c: int
    window_y: int
    window_x: int
    block_x: int
    gather_blocks: int
    gather_grid: tuple[int]


def _max_adjoint_window(in_size: int, out_size: int) -> int:
    """The longest window of ``_adjoint_window`` over the grid cells (as csrc/common.h)."""
    longest = 0
    for g in range(in_size):
        low = (2 * g - 1) * out_size - in_size
        high = (2 * g + 3) * out_size - in_size
        begin = 0 if (g <= 1 or low < 0) else max(low // (2 * in_size) - 1, 0)
        end = min(high // (2 * in_size) + 2, out_size)
        longest = max(longest, end - begin)
    return longest


def mix_launch_plan(B: int, k: int, C: int, H: int, W: int, h: int, w: int) -> MixLaunchPlan:
    """The launch parameters of ``mix_triton`` / ``mix_backward_triton`` for images [B,k,C,H,W]
    and logits [B,k,h,w] (the launchers use exactly this)."""
    HW = H * W
    block_k = triton.next_power_of_2(k)
    # The interpreter pays per program, not per element: give it big tiles.
    max_tile = 16384 if INTERPRETED else 4096
    block_p = min(triton.next_power_of_2(HW), max(16, max_tile // block_k))
    num_warps = 4 if block_k * block_p <= 2048 else 8
    num_blocks = triton.cdiv(HW, block_p)
    window_y = _max_adjoint_window(h, H)
    window_x = _max_adjoint_window(w, W)
    block_x = min(triton.next_power_of_2(window_x), 64)
    block_c = min(triton.next_power_of_2(h * w), max(16, max_tile // block_x))
    gather_blocks = triton.cdiv(h * w, block_c)
    return MixLaunchPlan(
        block_k=block_k,
        block_p=block_p,
        num_warps=num_warps,
        num_blocks=num_blocks,
        grid=(B * num_blocks,),
        int64_index=needs_int64_index(B * k * C * HW, B * k * HW),
        block_c=block_c,
        window_y=window_y,
        window_x=window_x,
        block_x=block_x,
        gather_blocks=gather_blocks,
        gather_grid=(B * k * gather_blocks,),
    )


def _manual_bf16(images: Tensor) -> bool:
    return INTERPRETED and images.dtype == torch.bfloat16


def _mix_forward(images: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    _check_mix_args("mix_triton", images, logits)
    images = images.contiguous()
    logits = logits.contiguous()
    B, k, C, H, W = images.shape
    h, w = logits.shape[2:]
    plan = mix_launch_plan(B, k, C, H, W, h, w)
    mixed = torch.empty((B, C, H, W), dtype=images.dtype, device=images.device)
    partial = torch.empty((B, plan.num_blocks), dtype=torch.float32, device=images.device)
    if B == 0:
        return mixed, partial.sum(dim=1)
    launch(
        _mix_fwd_kernel, plan.grid, images.device, "mix_triton",
        images, logits, mixed, partial,
        H, W, h, w, h / H, w / W, plan.num_blocks,
        K=k, C=C, BLOCK_K=plan.block_k, BLOCK_P=plan.block_p,
        MANUAL_BF16=_manual_bf16(images), INT64=plan.int64_index, num_warps=plan.num_warps,
    )  # fmt: skip
    # A second reduction instead of atomics keeps the sparsity deterministic.
    sparsity = partial.sum(dim=1) / (k * H * W)
    return mixed, sparsity


def _mix_backward(
    grad_mixed: Tensor,
    grad_sparsity: Tensor,
    images: Tensor,
    logits: Tensor,
    need_images_grad: bool,
    deterministic: bool,
) -> tuple[Tensor, Tensor]:
    _check_mix_args("mix_backward_triton", images, logits)
    B, k, C, H, W = images.shape
    h, w = logits.shape[2:]
    check(
        tuple(grad_mixed.shape) == (B, C, H, W),
        f"supermix::mix_backward_triton: grad_mixed must be [{B},{C},{H},{W}], got {tuple(grad_mixed.shape)}",
    )
    check(
        tuple(grad_sparsity.shape) == (B,),
        f"supermix::mix_backward_triton: grad_sparsity must be [{B}], got {tuple(grad_sparsity.shape)}",
    )
    ordered = deterministic or torch.are_deterministic_algorithms_enabled()
    images = images.contiguous()
    logits = logits.contiguous()
    grad_mixed = grad_mixed.contiguous()
    grad_sparsity = grad_sparsity.to(torch.float32).contiguous()
    plan = mix_launch_plan(B, k, C, H, W, h, w)
    if ordered:  # every cell is written by the gather pass
        grad_logits = torch.empty((B, k, h, w), dtype=torch.float32, device=logits.device)
        dz = torch.empty((B, k, H, W), dtype=torch.float32, device=logits.device)
    else:
        grad_logits = torch.zeros((B, k, h, w), dtype=torch.float32, device=logits.device)
        dz = grad_logits  # not read
    if need_images_grad:
        grad_images = torch.empty((B, k, C, H, W), dtype=images.dtype, device=images.device)
    else:
        grad_images = torch.empty((0,), dtype=images.dtype, device=images.device)
    if B == 0:
        return grad_images, grad_logits
    launch(
        _mix_bwd_kernel, plan.grid, images.device, "mix_backward_triton",
        grad_mixed, grad_sparsity, images, logits, grad_images, grad_logits, dz,
        H, W, h, w, h / H, w / W, plan.num_blocks,
        K=k, C=C, BLOCK_K=plan.block_k, BLOCK_P=plan.block_p,
        NEED_IMAGES_GRAD=need_images_grad, MANUAL_BF16=_manual_bf16(images),
        ORDERED=ordered, INT64=plan.int64_index, num_warps=plan.num_warps,
    )  # fmt: skip
    if ordered:
        launch(
            _bilinear_adjoint_kernel, plan.gather_grid, images.device, "mix_backward_triton",
            dz, grad_logits, H, W, h, w, h / H, w / W, plan.gather_blocks, plan.window_y, plan.window_x,
            BLOCK_X=plan.block_x, BLOCK_C=plan.block_c, INT64=plan.int64_index,
        )  # fmt: skip
    return grad_images, grad_logits


# --------------------------------------------------------------------------------------------
# Custom ops (fake kernels: shapes only, used under the interpreter; triton_op traces the
# launcher itself instead)
# --------------------------------------------------------------------------------------------
def _mix_fake(images: Tensor, logits: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
    _check_mix_args("mix_triton", images, logits)
    B, _, C, H, W = images.shape
    return images.new_empty((B, C, H, W)), logits.new_empty((B,), dtype=torch.float32)


def _mix_backward_fake(
    grad_mixed: Tensor,
    grad_sparsity: Tensor,
    images: Tensor,
    logits: Tensor,
    need_images_grad: bool,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    _check_mix_args("mix_backward_triton", images, logits)
    grad_images = images.new_empty(images.shape if need_images_grad else (0,))
    return grad_images, logits.new_empty(logits.shape, dtype=torch.float32)


@register_op("supermix::mix_triton", _mix_fake)
def _mix_op(images: Tensor, logits: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
    return _mix_forward(images, logits)


@register_op("supermix::mix_backward_triton", _mix_backward_fake)
def _mix_backward_op(
    grad_mixed: Tensor,
    grad_sparsity: Tensor,
    images: Tensor,
    logits: Tensor,
    need_images_grad: bool,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    return _mix_backward(grad_mixed, grad_sparsity, images, logits, need_images_grad, deterministic)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------
def mix_triton(images: Tensor, logits: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
    """Mix k images through sigmoid-normalised, bilinearly upsampled masks (Triton).

    Args:
        images: [B,k,C,H,W] float32 / float16 / bfloat16.
        logits: [B,k,h,w] float32, h <= H, w <= W.
        deterministic: carried to the backward by ``supermix_ext.ops``'s autograd formula (the
            forward is deterministic either way).

    Returns:
        mixed [B,C,H,W] in images' dtype, sparsity [B] float32 (as ``reference.mix_ref``).
        Not differentiable by itself: ``supermix_ext.ops`` registers the autograd formula.
    """
    return torch.ops.supermix.mix_triton(images, logits, bool(deterministic))


def mix_backward_triton(
    grad_mixed: Tensor,
    grad_sparsity: Tensor,
    images: Tensor,
    logits: Tensor,
    need_images_grad: bool = True,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    """Backward of ``mix_triton`` in one fused pass over the output pixels.

    Args:
        grad_mixed: [B,C,H,W] gradient of the loss with respect to ``mixed``.
        grad_sparsity: [B] gradient with respect to ``sparsity`` (zeros if unused).
        images, logits: the forward's inputs.
        need_images_grad: compute grad_images (else an empty [0] tensor is returned for it).
        deterministic: reduce onto the grid in a fixed order (two passes, k floats of scratch
            per pixel) instead of with float atomics; also on under
            ``torch.use_deterministic_algorithms(True)``.

    Returns:
        grad_images [B,k,C,H,W] in images' dtype (or [0]), grad_logits [B,k,h,w] float32.
    """
    return torch.ops.supermix.mix_backward_triton(
        grad_mixed, grad_sparsity, images, logits, need_images_grad, bool(deterministic)
    )
