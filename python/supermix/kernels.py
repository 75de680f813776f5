"""The kernel layer as the library's users and commands see it: the backends, and the masks and
their sparsity (eq. 4, 5) computed from stored mask logits.

Commands import these from here, never from ``supermix_ext``: the library is the one seam
between the commands and the kernels.
"""
from __future__ import annotations

import torch

from supermix_ext import BACKENDS, backend_info, deterministic_mode, resolve_backend
from supermix_ext.reference import normalised_masks_ref, sparsity_ref

__all__ = ["BACKENDS", "backend_info", "deterministic_mode", "resolve_backend",
           "normalised_masks", "mask_sparsity"]


def normalised_masks(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Full-resolution convex masks (eq. 4): mask logits [B,k,h,w] -> masks [B,k,H,W] with
    ``size = (H, W)``, summing to 1 over k; computed in float32 (float64 stays float64)."""
    if mask_logits.dtype != torch.float64:
        mask_logits = mask_logits.float()
    return normalised_masks_ref(mask_logits, tuple(size))


def mask_sparsity(masks: torch.Tensor) -> torch.Tensor:
    """The sparsity term of eq. 5 per sample: masks [B,k,H,W] -> [B], the mean of
    |m (m - 1)| (0 for masks of 0s and 1s, 1/4 where two sources share a pixel equally)."""
    return sparsity_ref(masks)
