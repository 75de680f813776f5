"""Losses for training on mixed batches: ``soft_target_cross_entropy`` takes the soft labels
[B, num_classes] that ``SuperMix``, ``MixUp`` and ``CutMix`` return (like timm's
``SoftTargetCrossEntropy``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["REDUCTIONS", "soft_target_cross_entropy"]

REDUCTIONS = ("mean", "sum", "none")


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with soft labels: ``-sum_c target_c * log_softmax(logits)_c`` per sample.

    Args:
        logits: [B, n] class scores, any float dtype (computed in float32 or wider).
        target: [B, n] float soft labels, rows summing to 1 (a mixer's ``y_mix``).
        reduction: ``"mean"`` over the batch (default), ``"sum"``, or ``"none"`` ([B] float).

    With one-hot targets this equals ``F.cross_entropy(logits, labels)``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"soft_target_cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"soft_target_cross_entropy: logits must be [B, num_classes], got {got}")
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        got = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"soft_target_cross_entropy: target must be float soft labels [B, num_classes], got {got} "
                        f"(int class labels go to F.cross_entropy)")
    if target.shape != logits.shape:
        raise ValueError(f"soft_target_cross_entropy: target must have the logits' shape {list(logits.shape)}, "
                         f"got {list(target.shape)}")
    acc = torch.promote_types(logits.dtype, torch.float32)
    loss = -(target.to(acc) * F.log_softmax(logits.to(acc), dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
