"""Batch mixers with one calling convention: ``x_mix, y_mix = mixer(x, y)``.

Like timm's ``Mixup`` and torchvision's ``v2.MixUp``: ``x`` is a batch [B,C,H,W], ``y`` holds
int class labels [B] (or soft labels [B,n]), and ``y_mix`` is a soft label [B, num_classes].
Every mixer combines k >= 2 images with weights r ~ Dirichlet(alpha), each image of the batch
mixed with k-1 others (cyclic shifts of a random permutation). ``MixUp`` and ``CutMix`` are
blind; given ``teacher=`` they are labelled by the teacher's softmax on the mixed image, as the
paper does for its baselines. ``SuperMix`` runs the solver of ``supermix.solver``.

Each mixer's offline form, ``mixer.mix_batch(x, generator=...)``, returns a full ``MixResult``
(sources, weights, masks, teacher probabilities): the form ``supermix generate`` writes.
Mixers are plain callables, so they work in a ``collate_fn`` as well as in a training loop.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from supermix.solver import MixResult, SolveStats, cyclic_sources, sample_dirichlet, solve

__all__ = ["CutMix", "MixUp", "SuperMix", "create_mixer", "MIXERS"]


def _soft_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    if y.dim() == 1:
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"y must hold int class labels [B] or soft labels [B,n], got dtype {y.dtype}")
        return F.one_hot(y.long(), num_classes).float()
    if y.dim() == 2 and y.shape[1] == num_classes:
        return y.float()
    raise ValueError(f"y must have shape [B] or [B, num_classes={num_classes}], got {list(y.shape)}")


def _check_common(k: int, alpha: float) -> None:
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")


class _Mixer:
    """Shared plumbing: sources, weights, teacher labelling and the (x, y) convention."""

    name = "mixer"

    def __init__(self, k: int = 2, alpha: float = 1.0, num_classes: int | None = None, teacher=None,
                 generator: torch.Generator | None = None):
        _check_common(k, alpha)
        self.k = k
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.teacher = teacher
        self.generator = generator

    def _teacher_probs(self, mixed: torch.Tensor) -> torch.Tensor:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():
                return F.softmax(self.teacher(mixed).float(), dim=1)
        finally:
            self.teacher.train(was_training)

    def _check_batch(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = (list(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: x must be a float tensor [B,C,H,W], got {got}")
        if x.shape[0] < self.k:
            raise ValueError(f"{self.name}: k={self.k} sources need a batch of at least k images, got B={x.shape[0]}")

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        raise NotImplementedError

    def _label_with_teacher(self, result: MixResult, x: torch.Tensor) -> MixResult:
        probs = self._teacher_probs(result.mixed)
        labels = self._teacher_probs(x).argmax(dim=1)
        result.labels = labels
        result.probs = probs
        result.targets = torch.zeros_like(probs).scatter_add_(1, labels[result.sources], result.weights)
        return result

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch; returns (x_mix [B,C,H,W], y_mix [B,num_classes] soft labels)."""
        result = self.mix_batch(x, self.generator)
        if self.teacher is not None:
            return result.mixed, result.probs
        n = self.num_classes or (y.shape[1] if y.dim() == 2 else int(y.max()) + 1)
        y_soft = _soft_labels(y.to(x.device), n)
        y_mix = (result.weights.unsqueeze(2) * y_soft[result.sources]).sum(dim=1)
        return result.mixed, y_mix


def _blind_result(mixed, sources, weights, full_masks=None) -> MixResult:
    B = mixed.shape[0]
    return MixResult(
        mixed=mixed, mask_logits=None, sources=sources, weights=weights, targets=weights,
        probs=None, iters=torch.zeros(B, dtype=torch.long, device=mixed.device),
        success=torch.ones(B, dtype=torch.bool, device=mixed.device), full_masks=full_masks,
        stats=SolveStats(),
    )


class MixUp(_Mixer):
    """k-way MixUp: x_mix = sum_i r_i x_i, r ~ Dirichlet(alpha) (Beta(alpha, alpha) for k=2)."""

    name = "MixUp"

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        self._check_batch(x)
        sources = cyclic_sources(x.shape[0], self.k, generator, x.device).to(x.device)
        weights = sample_dirichlet(x.shape[0], self.k, self.alpha, generator, x.device).to(x.device)
        mixed = (weights.view(*weights.shape, 1, 1, 1).to(x.dtype) * x[sources]).sum(dim=1)
        result = _blind_result(mixed, sources, weights)
        return self._label_with_teacher(result, x) if self.teacher is not None else result


class CutMix(_Mixer):
    """k-way CutMix: source 0 is the background; for i >= 1 a box of area fraction r_i, at a
    uniformly random centre and clipped at the border, is pasted from source i (later boxes
    over earlier ones). The weights returned are the pixel fractions each source really covers
    (as timm's ``correct_lam``), so labels match the image."""

    name = "CutMix"

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        self._check_batch(x)
        B, _, H, W = x.shape
        device = generator.device if generator is not None else x.device
        sources = cyclic_sources(B, self.k, generator, device).to(x.device)
        r = sample_dirichlet(B, self.k, self.alpha, generator, device)
        owner = torch.zeros(B, H, W, dtype=torch.long, device=device)
        rows = torch.arange(H, device=device).view(1, H, 1)
        cols = torch.arange(W, device=device).view(1, 1, W)
        for i in range(1, self.k):
            side = r[:, i].sqrt()
            cut_h = (side * H).round().long().view(B, 1, 1)
            cut_w = (side * W).round().long().view(B, 1, 1)
            cy = torch.randint(0, H, (B, 1, 1), generator=generator, device=device)
            cx = torch.randint(0, W, (B, 1, 1), generator=generator, device=device)
            inside = ((rows >= cy - cut_h // 2) & (rows < cy - cut_h // 2 + cut_h)
                      & (cols >= cx - cut_w // 2) & (cols < cx - cut_w // 2 + cut_w))
            owner = torch.where(inside, torch.full_like(owner, i), owner)
        masks = F.one_hot(owner, self.k).permute(0, 3, 1, 2).to(x.device, torch.float32)
        weights = masks.mean(dim=(2, 3))
        mixed = (masks.unsqueeze(2).to(x.dtype) * x[sources]).sum(dim=1)
        result = _blind_result(mixed, sources, weights, full_masks=masks)
        return self._label_with_teacher(result, x) if self.teacher is not None else result


class SuperMix(_Mixer):
    """SuperMix: masks solved so the teacher sees every source class (Algorithm 1).

    ``y_mix`` is ``label="target"``: sum_i r_i onehot(y_i) with the batch's own labels (the
    default, like the blind mixers), or ``label="teacher"``: the teacher's softmax on the mixed
    image. Keyword arguments go to ``supermix.solve`` (lambda_s, sigma, mask_size, max_iters,
    method, backend, ...).
    """

    name = "SuperMix"

    def __init__(self, teacher, k: int = 2, alpha: float = 3.0, num_classes: int | None = None,
                 label: str = "target", generator: torch.Generator | None = None, **solve_kwargs):
        super().__init__(k=k, alpha=alpha, num_classes=num_classes, teacher=None, generator=generator)
        if teacher is None:
            raise ValueError("SuperMix: teacher is required")
        if label not in ("target", "teacher"):
            raise ValueError(f"SuperMix: label must be 'target' or 'teacher', got {label!r}")
        self.solver_teacher = teacher
        self.label = label
        self.solve_kwargs = solve_kwargs

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        self._check_batch(x)
        return solve(self.solver_teacher, x, k=self.k, alpha=self.alpha, generator=generator, **self.solve_kwargs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.mix_batch(x, self.generator)
        if self.label == "teacher":
            return result.mixed, result.probs
        n = self.num_classes or result.targets.shape[1]
        y_soft = _soft_labels(y.to(x.device), n)
        return result.mixed, (result.weights.unsqueeze(2) * y_soft[result.sources]).sum(dim=1)


MIXERS = {"supermix": SuperMix, "mixup": MixUp, "cutmix": CutMix}


def create_mixer(name: str, teacher=None, **kwargs):
    """``create_mixer("supermix" | "mixup" | "cutmix", teacher=..., k=..., alpha=...)``."""
    key = name.lower()
    if key not in MIXERS:
        raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {name!r}")
    if key == "supermix":
        return SuperMix(teacher, **kwargs)
    return MIXERS[key](teacher=teacher, **kwargs)
