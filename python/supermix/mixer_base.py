"""What every mixer shares (:mod:`supermix.mixers` has the mixers and their registry): the
argument checks, the ``x_mix, y_mix = mixer(x, y)`` call with its label contract, ``prob`` and
``mode``, the teacher's labels, and the blind mixers' common path."""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from supermix.config import SolverConfig
from supermix.solver import MixResult, SolveStats, eval_mode

__all__ = ["LABELS", "MODES", "ON_FAILURE"]

LABELS = ("teacher", "target")
MODES = ("batch", "elem")
ON_FAILURE = ("drop", "retry", "keep")


def _reject_unknown(name: str, unknown: dict, valid) -> None:
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}; valid options: {sorted(valid)}")


def _check_common(name: str, k, alpha, num_classes, label_smoothing, prob, mode) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"{name}: k must be an int >= 2, got {k!r}")
    for arg, value, ok, expected in (
        ("alpha", alpha, lambda v: v > 0, "> 0"),
        ("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("prob", prob, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name}: {arg} must be a finite number {expected}, got {value!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 2):
        raise ValueError(f"{name}: num_classes must be an int >= 2, got {num_classes!r}")
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")


def _unpack(name: str, inputs: tuple):
    """(x, y) from ``mixer(x, y)`` or ``mixer((x, y))``, as torchvision's v2 transforms take them."""
    if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
        inputs = tuple(inputs[0])
    if len(inputs) != 2:
        raise TypeError(f"{name}: call as mixer(x, y) or mixer((x, y)), got {len(inputs)} input(s)")
    return inputs


def _check_images(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = (list(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a float tensor [B,C,H,W], got {got}")


def _soft_labels(name: str, y, batch: int, num_classes: int, device) -> torch.Tensor:
    """y (int [B] or soft [B, num_classes]) checked against the batch -> float32 [B, num_classes]."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: y must be a tensor of int class labels [B] or soft labels [B, num_classes], "
                        f"got {type(y).__name__}")
    if y.dim() not in (1, 2) or y.shape[0] != batch:
        raise ValueError(f"{name}: y must be [B={batch}] class labels or [B={batch}, num_classes={num_classes}] "
                         f"soft labels for x of batch size {batch}, got shape {list(y.shape)}")
    y = y.to(device)
    if y.dim() == 1:
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"{name}: y [B] must hold int class labels, got dtype {y.dtype}")
        lo, hi = (int(y.min()), int(y.max())) if batch else (0, 0)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: y class labels must be in [0, num_classes={num_classes}), "
                             f"got values in [{lo}, {hi}]")
        return F.one_hot(y.long(), num_classes).float()
    if y.shape[1] != num_classes:
        raise ValueError(f"{name}: y soft labels must be [B, num_classes={num_classes}], "
                         f"got width {y.shape[1]}")
    if not y.is_floating_point():
        raise TypeError(f"{name}: y soft labels [B, num_classes] must be float, got dtype {y.dtype}")
    if not bool(torch.isfinite(y).all()) or bool((y < 0).any()):
        raise ValueError(f"{name}: y soft labels must be finite and >= 0")
    return y.float()


def _draw_device(generator, x: torch.Tensor):
    return generator.device if generator is not None else x.device


def _blind_result(mixed, sources, weights, full_masks=None) -> MixResult:
    B = mixed.shape[0]
    return MixResult(
        mixed=mixed, mask_logits=None, sources=sources, weights=weights, targets=weights,
        probs=None, iters=torch.zeros(B, dtype=torch.long, device=mixed.device),
        success=torch.ones(B, dtype=torch.bool, device=mixed.device), full_masks=full_masks,
        stats=SolveStats(),
    )


def _k_alpha(name: str, k, alpha, config, default_alpha: float) -> tuple:
    """A mixer's k and alpha: the ones given, else the config's, else the defaults."""
    if config is not None and not isinstance(config, SolverConfig):
        raise TypeError(f"{name}: config must be a SolverConfig, got {type(config).__name__}")
    if k is None:
        k = config.k if config is not None else SolverConfig.k
    if alpha is None:
        alpha = config.alpha if config is not None else default_alpha
    return k, alpha


class _Mixer(nn.Module):
    """Shared plumbing: label contract, checks, ``prob``, and the (x, y) convention.

    The teacher is held, not owned: it is no submodule, so the mixer's ``state_dict`` is empty
    and ``.train()``/``.eval()``/``.to()`` leave the teacher alone (it is run in eval mode).
    """

    name = "mixer"
    key = "mixer"
    solves = False
    labels = LABELS

    # No defaults: each public mixer states its own (SuperMix's alpha and label differ from the
    # blind mixers'), and passes every setting here.
    def __init__(self, *, k: int, alpha: float, num_classes: int | None, teacher, label: str | None,
                 label_smoothing: float, prob: float, mode: str, generator: torch.Generator | None):
        super().__init__()
        _check_common(self.name, k, alpha, num_classes, label_smoothing, prob, mode)
        if label is None:
            label = "teacher" if teacher is not None else "target"
        if label not in LABELS:
            raise ValueError(f"{self.name}: label must be one of {LABELS}, got {label!r}")
        if label == "teacher" and teacher is None:
            raise ValueError(f"{self.name}: label='teacher' needs a teacher (teacher=None)")
        if teacher is None and num_classes is None:
            raise ValueError(f"{self.name}: num_classes is required without a teacher (the label width "
                             f"cannot come from the labels of one batch)")
        self.k = k
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.teacher = teacher
        self.label = label
        self.label_smoothing = float(label_smoothing)
        self.prob = float(prob)
        self.mode = mode
        self.generator = generator
        self.last_result: MixResult | None = None
        self.last_index: torch.Tensor | None = None
        self._width: int | None = None

    def __setattr__(self, name, value):
        if name == "teacher":  # held, not registered as a submodule (see the class docstring)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def options(cls) -> list[str]:
        """Names of the keyword options the constructor accepts."""
        params = inspect.signature(cls.__init__).parameters
        return sorted(n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD)

    def extra_repr(self) -> str:
        return (f"k={self.k}, alpha={self.alpha}, label={self.label!r}, num_classes={self.num_classes}, "
                f"label_smoothing={self.label_smoothing}, prob={self.prob}, mode={self.mode!r}")

    # ----------------------------------------------------------------------- teacher ----
    def _teacher_probs(self, mixed: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.teacher), torch.no_grad():
            logits = self.teacher(mixed).float()
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits).all(dim=1)).sum())
            raise FloatingPointError(f"{self.name}: the teacher returned non-finite logits (NaN or inf) on {bad} "
                                     f"of {logits.shape[0]} images; check its weights and the input normalisation")
        return F.softmax(logits, dim=1)

    def _label_width(self, x: torch.Tensor) -> int:
        """num_classes, or the teacher's output width (one image, once), checked against it."""
        if self._width is None:
            if self.teacher is None:
                self._width = self.num_classes
            else:
                width = self._teacher_probs(x[:1]).shape[1]
                if self.num_classes is not None and self.num_classes != width:
                    raise ValueError(f"{self.name}: num_classes={self.num_classes} but the teacher returns "
                                     f"{width} classes")
                self._width = width
        return self._width

    # ------------------------------------------------------------------------- forms ----
    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        """Offline form: mix every image of x with k-1 others; the full ``MixResult``."""
        raise NotImplementedError

    def _mix_for_training(self, x: torch.Tensor) -> MixResult:
        """The online form's mixing of the rows chosen by ``prob``; ``probs`` set for label='teacher'."""
        raise NotImplementedError

    def _rows_to_mix(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        """[M] int64 rows of the batch to mix this call (``prob`` per batch or per sample)."""
        everything = torch.arange(batch, device=x.device)
        if self.prob >= 1.0:
            return everything
        if self.prob <= 0.0:
            return everything[:0]
        device = _draw_device(self.generator, x)
        if self.mode == "batch":
            draw = torch.rand((), generator=self.generator, device=device)
            return everything if float(draw) < self.prob else everything[:0]
        keep = torch.rand(batch, generator=self.generator, device=device) < self.prob
        return keep.nonzero().flatten().to(x.device)

    def forward(self, *inputs):
        """``mixer(x, y)`` or ``mixer((x, y))`` -> (x_mix [B,C,H,W], y_mix [B,num_classes] float32)."""
        x, y = _unpack(self.name, inputs)
        _check_images(self.name, x)
        batch = x.shape[0]
        if self.prob >= 1.0 and batch < self.k:
            raise ValueError(f"{self.name}: k={self.k} sources need a batch of at least k images, got B={batch}")
        width = self._label_width(x)
        y_soft = _soft_labels(self.name, y, batch, width, x.device)
        rows = self._rows_to_mix(batch, x)
        self.last_result, self.last_index = None, rows[:0]
        x_mix, y_mix = x, y_soft
        if rows.numel() >= self.k:  # fewer selected images than k: nothing can be mixed
            whole = rows.numel() == batch
            result = self._mix_for_training(x if whole else x[rows])
            if self.label == "teacher":
                labels = result.probs
            else:
                own = y_soft if whole else y_soft[rows]
                labels = (result.weights.unsqueeze(2) * own[result.sources]).sum(dim=1)
            if whole:
                x_mix, y_mix = result.mixed, labels.float()
            else:
                x_mix, y_mix = x.clone(), y_soft.clone()
                x_mix[rows] = result.mixed
                y_mix[rows] = labels.float()
            self.last_result, self.last_index = result, rows
        if self.label_smoothing > 0:
            y_mix = y_mix * (1.0 - self.label_smoothing) + self.label_smoothing / width
        return x_mix, y_mix


class _BlindMixer(_Mixer):
    """A mixer that does not look at the images; labelled by a teacher when one is given."""

    def __init__(self, k: int | None = None, alpha: float | None = None,
                 num_classes: int | None = None, teacher=None, label: str | None = None,
                 label_smoothing: float = 0.0, prob: float = 1.0, mode: str = "batch",
                 generator: torch.Generator | None = None, config: SolverConfig | None = None,
                 **unknown):
        _reject_unknown(self.name, unknown, self.options())
        # k and alpha: given, else the config's, else 2 and 1.0.
        k, alpha = _k_alpha(self.name, k, alpha, config, default_alpha=1.0)
        super().__init__(k=k, alpha=alpha, num_classes=num_classes, teacher=teacher, label=label,
                         label_smoothing=label_smoothing, prob=prob, mode=mode, generator=generator)

    def _blind_mix(self, x: torch.Tensor, generator: torch.Generator | None) -> MixResult:
        raise NotImplementedError

    def _label_with_teacher(self, result: MixResult, x: torch.Tensor) -> MixResult:
        probs = self._teacher_probs(result.mixed)
        labels = self._teacher_probs(x).argmax(dim=1)
        result.labels = labels
        result.probs = probs
        result.targets = torch.zeros_like(probs).scatter_add_(1, labels[result.sources], result.weights)
        return result

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        _check_images(self.name, x)
        if x.shape[0] < self.k:
            raise ValueError(f"{self.name}: k={self.k} sources need a batch of at least k images, got B={x.shape[0]}")
        result = self._blind_mix(x, generator)
        return self._label_with_teacher(result, x) if self.teacher is not None else result

    def _mix_for_training(self, x: torch.Tensor) -> MixResult:
        result = self._blind_mix(x, self.generator)
        if self.label == "teacher":
            result.probs = self._teacher_probs(result.mixed)
        return result
