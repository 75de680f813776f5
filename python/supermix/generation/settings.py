"""The settings of a generation: presets, defaults, the :class:`GenerateSettings` record built
once from the command line or from keywords, and their checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from ..config import COMMAND_LINE_SETTINGS, SolverConfig
from ..errors import UsageError
from ..mixers import MIXERS, mixer_names, mixer_solves
from ..solver import METHODS

__all__ = [
    "SOLVER_PRESETS",
    "DEFAULTS",
    "MIXER_NAMES",
    "METHOD_NAMES",
    "STORE_NAMES",
    "SPLIT_NAMES",
    "SOLVER_KEYS",
    "IDENTITY_KEYS",
    "GenerateSettings",
    "resolve_settings",
    "check_settings",
    "check_image_fit",
]

# The paper's solver settings (sec. 4): alpha 3, lambda_s 25; CIFAR-100 8x8 masks, sigma 1;
# ImageNet 16x16, sigma 2. Fashion-MNIST (28x28) uses the CIFAR values. k is 2, and 3 for
# ImageNet. (The training commands' lr schedules are supermix.training.SCHEDULE_PRESETS.)
SOLVER_PRESETS: dict[str, dict[str, Any]] = {
    "cifar100": {"k": 2, "alpha": 3.0, "lambda_s": 25.0, "sigma": 1.0, "mask_size": 8},
    "imagenet": {"k": 3, "alpha": 3.0, "lambda_s": 25.0, "sigma": 2.0, "mask_size": 16},
    "fashion-mnist": {"k": 2, "alpha": 3.0, "lambda_s": 25.0, "sigma": 1.0, "mask_size": 8},
}

# Values used when neither a flag nor a preset sets a setting; the solver's are SolverConfig's.
_SOLVER_DEFAULTS = SolverConfig()
DEFAULTS: dict[str, Any] = {
    "k": _SOLVER_DEFAULTS.k, "alpha": _SOLVER_DEFAULTS.alpha,
    "lambda_s": _SOLVER_DEFAULTS.lambda_s, "sigma": _SOLVER_DEFAULTS.sigma,
    "mask_size": _SOLVER_DEFAULTS.mask_size[0], "method": _SOLVER_DEFAULTS.method,
    "mixer": "supermix", "max_iters": _SOLVER_DEFAULTS.max_iters,
    "min_iters": _SOLVER_DEFAULTS.min_iters,
    "batch_size": 128, "shard_size": 1024, "seed": 0, "store": "uint8", "split": "train",
    "keep_failed": False,
}

MIXER_NAMES = mixer_names()
METHOD_NAMES = tuple(METHODS)
STORE_NAMES = ("uint8", "float16")
SPLIT_NAMES = ("train", "test")

# The settings a preset and DEFAULTS fill in.
SOLVER_KEYS = tuple(DEFAULTS)

# The settings that decide the content of the shards: a rerun must match them all. Runtime
# choices (device, backend, PNG export, progress bar) are recorded in the manifest, not compared.
# A set mixed from an index file (--limit FILE) adds "subset", the sha256 of its indices.
IDENTITY_KEYS = (
    "format", "teacher_sha256", "data", "split", "dataset_size", "image_shape", "mean", "std",
    "num_classes", "size", "shard_size", "batch_size", "seed", "mixer", "k", "alpha",
    "lambda_s", "sigma", "mask_size", "method", "max_iters", "min_iters", "keep_failed", "store",
)


@dataclass
class GenerateSettings:
    """Everything a generation is asked for. ``None`` means "not given": the preset's value,
    else :data:`DEFAULTS` (see :meth:`solver_settings`).

    out: output folder; size: N, samples of the finished set; teacher: checkpoint (None: the
    shipped one); data, data_root: data spec and folder override; limit: mix only the first N
    images of the split (an int) or those listed in an index file (a path); preset: a key of
    :data:`SOLVER_PRESETS`; the solver settings k ... keep_failed; export_png, overwrite,
    backend, device, progress: runtime choices, recorded but not compared on resume.
    """

    out: str
    size: int
    teacher: str | None = None
    data: str = "fashion-mnist"
    data_root: str | None = None
    preset: str | None = None
    k: int | None = None
    alpha: float | None = None
    lambda_s: float | None = None
    sigma: float | None = None
    mask_size: int | None = None
    method: str | None = None
    mixer: str | None = None
    max_iters: int | None = None
    min_iters: int | None = None
    batch_size: int | None = None
    shard_size: int | None = None
    seed: int | None = None
    store: str | None = None
    split: str | None = None
    keep_failed: bool | None = None
    export_png: bool = False
    overwrite: bool = False
    backend: str | None = None
    device: str | None = None
    limit: int | str | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.out = os.fspath(self.out)
        if self.teacher is not None:
            self.teacher = os.fspath(self.teacher)
        if self.device is not None:
            self.device = str(self.device)
        if isinstance(self.limit, os.PathLike):
            self.limit = os.fspath(self.limit)

    def arguments(self) -> dict:
        """What the manifest records as the arguments of a library call (the progress bar is
        not one; ``limit`` only when given)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("limit", "progress")}
        if self.limit is not None:
            record["limit"] = self.limit
        return record

    def solver_settings(self) -> tuple[dict, dict]:
        """``(settings, preset_values)``: the explicit values over the preset over
        :data:`DEFAULTS`, with ``size``; checked.

        Raises:
            UsageError: an unknown preset or a value out of range (naming the flag).
        """
        settings, preset_values = resolve_settings(
            self.preset, **{key: getattr(self, key) for key in SOLVER_KEYS})
        settings["size"] = self.size
        check_settings(settings)
        return settings, preset_values


def resolve_settings(preset: str | None = None, **explicit: Any) -> tuple[dict, dict]:
    """Merge explicit values over a preset over :data:`DEFAULTS`.

    Returns ``(settings, preset_values)``; an explicit ``None`` means "not given".

    Raises:
        UsageError: unknown preset.
    """
    if preset is not None and preset not in SOLVER_PRESETS:
        raise UsageError(f"preset: expected one of {sorted(SOLVER_PRESETS)}, got {preset!r}")
    preset_values = dict(SOLVER_PRESETS[preset]) if preset else {}
    settings = dict(DEFAULTS)
    settings.update(preset_values)
    settings.update({k: v for k, v in explicit.items() if v is not None})
    return settings, preset_values


def check_settings(s: dict) -> None:
    """Raise :class:`UsageError` naming the first setting out of range."""
    def need(cond: bool, name: str, expected: str) -> None:
        if not cond:
            raise UsageError(f"{name}: expected {expected}, got {s[name]!r}")

    need(isinstance(s["size"], int) and s["size"] > 0, "size", "an integer > 0")
    # The solver's settings are SolverConfig's to check (one place for solve, the mixers and
    # every command); the grid's lower bound is checked here, before the images are known.
    SolverConfig().replace(**{name: s[name] for name in COMMAND_LINE_SETTINGS})
    need(isinstance(s["mask_size"], int) and s["mask_size"] >= 1, "mask_size", "an integer >= 1")
    # The blind mixers take no solver steps, so a step count for them is a mistake.
    blind = ", ".join(name for name in MIXER_NAMES if not MIXERS[name].solves)
    need(mixer_solves(s["mixer"]) or s["min_iters"] == 0, "min_iters",
         f"0 for the blind mixers ({blind})")
    need(isinstance(s["batch_size"], int) and s["batch_size"] >= 1, "batch_size", "an integer >= 1")
    need(isinstance(s["shard_size"], int) and s["shard_size"] >= 1, "shard_size", "an integer >= 1")
    need(isinstance(s["seed"], int) and s["seed"] >= 0, "seed", "an integer >= 0")
    need(s["mixer"] in MIXER_NAMES, "mixer", f"one of {list(MIXER_NAMES)}")
    need(s["store"] in STORE_NAMES, "store", f"one of {list(STORE_NAMES)}")
    need(s["split"] in SPLIT_NAMES, "split", f"one of {list(SPLIT_NAMES)}")


def check_image_fit(s: dict, image_shape, setting: str = "mask_size") -> None:
    """The settings that depend on the images: the mask grid must fit in them (SuperMix only).
    ``image_shape``: (C, H, W).

    Raises:
        UsageError: naming the flag, the image size and the value.
    """
    if not mixer_solves(s.get("mixer", DEFAULTS["mixer"])):
        return
    h, w = int(image_shape[-2]), int(image_shape[-1])
    if s["mask_size"] > min(h, w):
        raise UsageError(f"{setting}: expected a mask grid of at most the image size {h}x{w}, got "
                         f"{s['mask_size']}")
