"""Training objectives: cross-entropy to soft labels, Hinton KD, the paper's distillation terms."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import soft_target_cross_entropy
from ..mixed_set import GeneratedSet

__all__ = [
    "kd_loss", "ce_loss", "ce_to_teacher_top1", "DistillWeights", "distill_objective",
    "MIXED_LABELS", "soft_cross_entropy", "mixed_targets",
]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            T: float = 4.0) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over
    the batch. student_logits, teacher_logits: [B,n] (computed in float32). Returns a scalar."""
    log_q = F.log_softmax(student_logits.float() / T, dim=1)
    p = F.softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean") * (T * T)


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to int labels [B], mean over the batch."""
    return F.cross_entropy(student_logits.float(), labels)


def ce_to_teacher_top1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """"CE distillation" (paper sec. 4.2): cross-entropy to the teacher's top class, which
    carries no information about the other classes. Mean over the batch."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=1))


@dataclass(frozen=True)
class DistillWeights:
    """Weights of the four terms and the KD temperature."""

    ce: float = 1.0
    kd: float = 0.0
    mixed_ce: float = 0.0
    mixed_kd: float = 0.0
    T: float = 4.0

    @property
    def needs_mixed(self) -> bool:
        return self.mixed_ce > 0 or self.mixed_kd > 0


def distill_objective(w: DistillWeights, student_real: torch.Tensor, labels: torch.Tensor,
                      teacher_real: torch.Tensor | None = None,
                      student_mixed: torch.Tensor | None = None,
                      teacher_mixed: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the active terms and each active term unweighted (for the log).

    student_real, teacher_real: logits [B,n] on the real images; labels: int64 [B];
    student_mixed, teacher_mixed: logits [B',n] on the mixed images. Terms with weight 0 are
    not computed, and their inputs may be None.
    """
    parts: dict[str, torch.Tensor] = {}
    total = student_real.new_zeros((), dtype=torch.float32)
    terms = (
        ("ce", w.ce, lambda: ce_loss(student_real, labels)),
        ("kd", w.kd, lambda: kd_loss(student_real, teacher_real, w.T)),
        ("mixed_ce", w.mixed_ce, lambda: ce_to_teacher_top1(student_mixed, teacher_mixed)),
        ("mixed_kd", w.mixed_kd, lambda: kd_loss(student_mixed, teacher_mixed, w.T)),
    )
    for name, weight, term in terms:
        if weight > 0:
            value = term()
            parts[name] = value.detach()
            total = total + weight * value
    return total, parts




MIXED_LABELS = ("y_hat", "teacher_probs", "teacher_top1")


# The trainers' soft-label loss is the one the mixers' users get: -sum_c t_c log_softmax(z)_c,
# mean over the batch (one-hot rows for real images).
soft_cross_entropy = soft_target_cross_entropy


def mixed_targets(generated: GeneratedSet, label: str) -> torch.Tensor:
    """Soft labels [n', classes] of a generated set for ``--mixed-label``."""
    if label == "y_hat":
        return generated.y_hat
    if label == "teacher_probs":
        return generated.teacher_probs
    top = generated.teacher_probs.argmax(dim=1)
    return F.one_hot(top, generated.teacher_probs.shape[1]).float()


