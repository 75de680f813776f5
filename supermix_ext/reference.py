"""Pure-PyTorch references of the three SuperMix ops: the executable spec.

Every fast path (C++ CPU, CUDA, Triton) is tested against these functions. They are written for
clarity, not speed: ``mix_ref`` materialises the k full-resolution masks that the fused kernels
never allocate. Autograd flows through them, so their gradients are the reference gradients.

Shapes: B mixed samples, k sources each, C channels, H x W images, h x w mask grid.
Paper equations refer to Dabouei et al., "SuperMix", CVPR 2021.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "normalised_masks_ref",
    "sparsity_ref",
    "mix_ref",
    "gaussian_smooth_ref",
    "gaussian_taps",
    "newton_step_ref",
    "STEP_MIN",
    "STEP_MAX",
    "DENOM_EPS",
]

# Bounds on the Newton step size, from the authors' released code: the lower one keeps a
# sample moving when its loss is tiny, the upper one stops a near-zero gradient from sending
# the logits to infinity.
STEP_MIN = 1e-4
STEP_MAX = 2000.0
# Added to <g_sigma * grad, grad> so a zero gradient gives a finite (then clamped) step.
DENOM_EPS = 1e-10


def _accumulation_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def normalised_masks_ref(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Full-resolution convex masks, paper eq. 4.

    logits [B,k,h,w] -> masks [B,k,H,W], m_i = s(z_i) / sum_j s(z_j), z = bilinear upsample
    of the logits (align_corners=False).
    """
    acc = _accumulation_dtype(logits)
    z = F.interpolate(logits.to(acc), size=size, mode="bilinear", align_corners=False)
    s = torch.sigmoid(z)
    return s / s.sum(dim=1, keepdim=True)


def sparsity_ref(masks: torch.Tensor) -> torch.Tensor:
    """The sparsity term of eq. 5 per sample: masks [B,k,H,W] -> [B], the mean over (i, u) of
    |m_i(u) (m_i(u) - 1)|."""
    return (masks * (masks - 1)).abs().mean(dim=(1, 2, 3))


def mix_ref(images: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix k images through sigmoid-normalised, upsampled masks (paper eq. 1, 4, 5).

    Args:
        images: [B,k,C,H,W], float32 / float16 / bfloat16 / float64.
        logits: [B,k,h,w] mask logits on the coarse grid, float32 or float64, h <= H, w <= W.

    Returns:
        mixed: [B,C,H,W] in the dtype of ``images``, sum_i m_i * images_i (eq. 1).
        sparsity: [B] in the accumulation dtype (that of ``logits``),
            mean over (i, u) of |m_i(u) (m_i(u) - 1)| (eq. 5 at full resolution).
    """
    acc = _accumulation_dtype(logits)
    H, W = images.shape[-2:]
    masks = normalised_masks_ref(logits, (H, W))
    mixed = (masks.unsqueeze(2) * images.to(acc)).sum(dim=1)
    return mixed.to(images.dtype), sparsity_ref(masks)


def gaussian_taps(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """1-D Gaussian taps at integer offsets -r..r, r = floor(2.5 sigma), normalised to sum 1.

    sigma = 0 gives the single tap [1] (the identity). sigma = 1 gives the original code's
    5-tap kernel exp(-t^2/2), t = -2..2.
    """
    radius = math.floor(2.5 * sigma)
    if radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def gaussian_smooth_ref(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of mask gradients, the g_sigma * (.) of paper eq. 7.

    Args:
        grad: [N,h,w], float32 or float64.
        sigma: standard deviation in grid cells, >= 0 (0 is the identity).

    Returns:
        [N,h,w], same dtype: rows then columns convolved with ``gaussian_taps(sigma)``,
        zero padding at the border.
    """
    taps = gaussian_taps(sigma, dtype=grad.dtype, device=grad.device)
    radius = (taps.numel() - 1) // 2
    if radius == 0:
        return grad.clone()
    x = grad.unsqueeze(1)
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))
    x = F.conv2d(x, taps.view(1, 1, -1, 1), padding=(radius, 0))
    return x.squeeze(1)


def newton_step_ref(
    logits: torch.Tensor,
    grad: torch.Tensor,
    loss: torch.Tensor,
    active: torch.Tensor,
    sigma: float,
) -> torch.Tensor:
    """Newton step with smooth projection, paper eq. 7, per sample b.

    sg = g_sigma * grad_b, step = clamp(loss_b / (<sg, grad_b> + 1e-10), 1e-4, 2000),
    logits'_b = logits_b - step * sg for active samples; inactive samples are copied unchanged.

    Args:
        logits: [B,k,h,w] float32 or float64.
        grad: [B,k,h,w] gradient of the per-sample loss with respect to the logits.
        loss: [B] per-sample loss L'_SM (KL + lambda_s * sparsity).
        active: [B] bool.
        sigma: Gaussian standard deviation in grid cells.

    Returns:
        [B,k,h,w] new logits (a new tensor; the inputs are not modified).
    """
    B, k, h, w = logits.shape
    smoothed = gaussian_smooth_ref(grad.reshape(B * k, h, w), sigma).reshape(B, k, h, w)
    denom = (smoothed * grad).sum(dim=(1, 2, 3)) + DENOM_EPS
    step = (loss.to(logits.dtype) / denom).clamp(STEP_MIN, STEP_MAX)
    updated = logits - step.view(B, 1, 1, 1) * smoothed
    return torch.where(active.view(B, 1, 1, 1), updated, logits)
