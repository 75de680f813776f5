"""The learning-rate schedule: presets, epoch scaling with a mixed set, step and cosine lr."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

__all__ = [
    "DEFAULT_DECAY_FRACTIONS", "SCHEDULE_PRESETS", "SCHEDULE_DEFAULTS", "resolve_hparams",
    "scale_schedule", "step_lr",
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


def resolve_hparams(args: argparse.Namespace) -> None:
    """Fill unset schedule flags from ``--schedule-preset``, then :data:`SCHEDULE_DEFAULTS`
    (in place)."""
    preset = SCHEDULE_PRESETS.get(args.preset, {}) if args.preset else {}
    for key, default in SCHEDULE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    if args.lr_decay_epochs is None:
        args.lr_decay_epochs = list(preset.get("lr_decay_epochs") or
                                    sorted({max(1, int(round(f * args.epochs)))
                                            for f in DEFAULT_DECAY_FRACTIONS}))


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


