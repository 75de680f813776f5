"""The learning-rate schedule: presets, epoch scaling with a mixed set, step and cosine lr."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

__all__ = [
    "DEFAULT_DECAY_FRACTIONS", "SCHEDULE_PRESETS", "SCHEDULE_DEFAULTS", "resolve_schedule",
    "scale_schedule", "step_lr", "warmup_lr_factor",
]

# The paper's CIFAR-100 decays, 200/300/400/500 of 600 epochs, as fractions of the run.
DEFAULT_DECAY_FRACTIONS = (1 / 3, 1 / 2, 2 / 3, 5 / 6)

SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    # Paper sec. 4: CIFAR-100, batch 128, 600 epochs decayed by 0.1 at 200, 300, 400, 500.
    "cifar100": {"batch_size": 128, "epochs": 600, "lr_decay_epochs": [200, 300, 400, 500],
                 "lr": 0.1, "momentum": 0.9, "wd": 5e-4, "lr_decay_rate": 0.1},
    # Paper sec. 4: ImageNet batch 256; the schedule is torchvision's reference recipe.
    "imagenet": {"batch_size": 256, "epochs": 100, "lr_decay_epochs": [30, 60, 90],
                 "lr": 0.1, "momentum": 0.9, "wd": 1e-4, "lr_decay_rate": 0.1},
}
# Values of the schedule flags that neither a flag nor a preset sets.
SCHEDULE_DEFAULTS = {"batch_size": 128, "epochs": 30, "lr": 0.1, "momentum": 0.9, "wd": 5e-4,
                     "lr_decay_rate": 0.1}


def resolve_schedule(preset: str | None = None, **given: Any) -> dict[str, Any]:
    """The schedule settings (batch_size, epochs, lr, momentum, wd, lr_decay_rate,
    lr_decay_epochs): each ``given`` value that is not None, else the preset's
    (:data:`SCHEDULE_PRESETS`), else :data:`SCHEDULE_DEFAULTS`; the decays default to the
    preset's, else 1/3, 1/2, 2/3 and 5/6 of the epochs.

    Raises:
        UsageError: an unknown preset (naming the setting ``preset``).
    """
    if preset is not None and preset not in SCHEDULE_PRESETS:
        from ..errors import UsageError
        raise UsageError(f"preset: expected one of {sorted(SCHEDULE_PRESETS)}, got {preset!r}")
    chosen = SCHEDULE_PRESETS.get(preset, {}) if preset else {}
    values = {key: given[key] if given.get(key) is not None else chosen.get(key, default)
              for key, default in SCHEDULE_DEFAULTS.items()}
    decays = given.get("lr_decay_epochs")
    if decays is None:
        decays = list(chosen.get("lr_decay_epochs") or
                      sorted({max(1, int(round(f * values["epochs"])))
                              for f in DEFAULT_DECAY_FRACTIONS}))
    values["lr_decay_epochs"] = decays
    return values


def scale_schedule(epochs: int, decay_epochs: Sequence[int], num_labelled: int,
                   epoch_slots: int, scale: bool = True) -> tuple[int, list[int]]:
    """Epochs and decay epochs of a run whose epoch is ``epoch_slots`` samples long.

    ``epochs`` and ``decay_epochs`` count passes over ``num_labelled`` images; the result
    keeps the number of iterations fixed: ``round(e * num_labelled / epoch_slots)`` (at least
    one epoch). With kappa = n'/n >= 1 in distillation this is the paper's 1/kappa.

    >>> scale_schedule(600, [200, 300, 400, 500], 50_000, 250_000)
    (120, [40, 60, 80, 100])
    """
    if not scale or epoch_slots == num_labelled:
        return int(epochs), [int(d) for d in decay_epochs]
    factor = num_labelled / epoch_slots
    # A decay never moves to epoch 0 (which would skip the initial lr altogether).
    return (max(1, int(round(epochs * factor))),
            [max(1, int(round(d * factor))) if d > 0 else 0 for d in decay_epochs])


def step_lr(base_lr: float, epoch: int, decay_epochs: Sequence[int], rate: float) -> float:
    """Learning rate of 0-based ``epoch``: ``base_lr * rate ** #{d in decay_epochs: epoch >= d}``
    (the original code's ``adjust_learning_rate``, which decays after epoch d is complete)."""
    return base_lr * rate ** sum(1 for d in decay_epochs if epoch >= d)




def warmup_lr_factor(epochs: int, steps_per_epoch: int, warmup_epochs: float, schedule: str,
                     gamma: float, milestones: Sequence[int] | None = None
                     ) -> Callable[[int], float]:
    """``factor(step)``: the lr multiplier of global step ``step`` for the teacher's recipe:
    linear warm-up over ``warmup_epochs``, then cosine to 0 over the run (``schedule
    "cosine"``) or ``gamma`` per milestone passed (default: half and three quarters of the
    epochs)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    milestones = milestones or [int(epochs * 0.5), int(epochs * 0.75)]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        epoch = step // steps_per_epoch
        return gamma ** sum(epoch >= m for m in milestones)

    return factor
