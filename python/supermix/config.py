"""The solver's settings in one typed, frozen place: their defaults are written here once and
checked here once, when a ``SolverConfig`` is made.

``supermix.solve(teacher, images, config, **overrides)`` and the ``SuperMix`` mixer take one;
``config.replace(max_iters=20)`` gives a changed copy (checked again). Checks that need the
data (k against the batch size, the mask grid against the image size) stay in ``solve``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .errors import UsageError

__all__ = ["METHODS", "DEFAULT_METHOD", "SolverConfig", "SOLVER_FIELDS", "SettingError",
           "COMMAND_LINE_SETTINGS", "setting_help"]

METHODS = ("margin_gd", "newton_sp", "newton", "sgd")
# The method that solve, the mixers and generate use when none is named.
DEFAULT_METHOD = "margin_gd"


class SettingError(UsageError):
    """A solver setting out of range (a ``ValueError``). ``setting`` names the field,
    ``expected`` says what it takes and ``got`` is the value; the command line reports the
    three under the setting's flag (``--lambda-s: expected ..., got ...``)."""

    def __init__(self, setting: str, expected: str, got):
        self.setting, self.expected, self.got = setting, expected, got
        super().__init__(f"solve: {setting} must be {expected}, got {got!r}")


def _setting(default, help: str, command_line: bool = True):
    # The help text is the one every command's flag shows (supermix.commands.args.add_solver_arguments).
    return field(default=default, metadata={"help": help, "command_line": command_line})


@dataclass(frozen=True)
class SolverConfig:
    """Settings of ``supermix.solve`` (the paper's sec. 4 values by default).

    Attributes:
        k: sources per mixed image (>= 2).
        alpha: Dirichlet concentration of the mixing weights r (eq. 2), > 0.
        lambda_s: weight of the sparsity loss L_s (eq. 5), >= 0.
        sigma: Gaussian smoothing of the Newton direction in grid cells (eq. 7); ``newton_sp``
            only.
        mask_size: h (square) or (h, w) of the mask-logit grid; stored as (h, w); between 1x1
            and the image size (checked by ``solve``).
        max_iters: iteration cap; unfinished samples come back with ``success=False``.
        min_iters: steps every sample takes before success may stop it (0..max_iters).
        method: ``"margin_gd"`` (default) | ``"newton_sp"`` | ``"newton"`` | ``"sgd"``.
        lr: SGD learning rate (``method="sgd"``; the paper's 0.1).
        lambda_tv: TV weight of the Table 4 baselines' loss (paper sec. 4.4: 250).
        backend: kernel backend for ``mix`` and ``newton_step`` (``supermix_ext.ops``).
        autocast_dtype: run the teacher under autocast in this dtype (bf16/fp16), or None.
        channels_last: feed the teacher channels_last tensors.
    """

    k: int = _setting(2, "sources per mixed image")
    alpha: float = _setting(3.0, "Dirichlet concentration of the mixing weights r, eq. 2")
    lambda_s: float = _setting(25.0, "weight of the sparsity loss L_s, eq. 5")
    sigma: float = _setting(1.0, "Gaussian smoothing of newton_sp's step in grid cells, eq. 7 "
                                 "(the other methods do not smooth)")
    mask_size: int | tuple[int, int] = _setting(8, "side of the mask-logit grid")
    max_iters: int = _setting(50, "iteration cap; unfinished samples fail")
    min_iters: int = _setting(0, "steps every sample takes before the criterion may stop it (0: "
                                 "samples that meet it at the uniform start stay plain averages)")
    method: str = _setting(DEFAULT_METHOD, "the iteration: margin_gd (the package's), "
                                          "newton_sp (the paper's Algorithm 1), newton, sgd")
    lr: float = _setting(0.1, "SGD learning rate (method sgd)", command_line=False)
    lambda_tv: float = _setting(250.0, "TV weight of the Table 4 baselines", command_line=False)
    backend: str | None = _setting(None, "kernel backend", command_line=False)
    autocast_dtype: torch.dtype | None = _setting(None, "teacher autocast dtype",
                                                  command_line=False)
    channels_last: bool = _setting(False, "channels_last teacher inputs", command_line=False)

    def __post_init__(self):
        size = self.mask_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        # Its range (1x1 up to the image size) is checked by solve, which sees the images.
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
            raise SettingError("mask_size", "an int or a pair (h, w) of ints", self.mask_size)
        object.__setattr__(self, "mask_size", (int(size[0]), int(size[1])))
        if self.method not in METHODS:
            raise SettingError("method", f"one of {METHODS}", self.method)
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 2:
            raise SettingError("k", "an int >= 2", self.k)
        for name, ok, expected in (
            ("alpha", lambda v: v > 0, "> 0"),
            ("lambda_s", lambda v: v >= 0, ">= 0"),
            ("lambda_tv", lambda v: v >= 0, ">= 0"),
            ("sigma", lambda v: v >= 0, ">= 0"),
            ("lr", lambda v: v > 0, "> 0"),
        ):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or not ok(value)):
                raise SettingError(name, f"a finite number {expected}", value)
        if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool) or self.max_iters < 0:
            raise SettingError("max_iters", "an int >= 0", self.max_iters)
        if (not isinstance(self.min_iters, int) or isinstance(self.min_iters, bool)
                or not 0 <= self.min_iters <= self.max_iters):
            raise SettingError("min_iters", f"an int in [0, max_iters={self.max_iters}]",
                               self.min_iters)
        if self.autocast_dtype is not None and not isinstance(self.autocast_dtype, torch.dtype):
            raise TypeError(f"solve: autocast_dtype must be a torch.dtype or None, got "
                            f"{self.autocast_dtype!r}")

    def replace(self, **overrides) -> "SolverConfig":
        """A copy with ``overrides`` (checked as a new config).

        Raises:
            TypeError: an override that is no setting, naming the valid ones.
        """
        unknown = sorted(set(overrides) - set(SOLVER_FIELDS))
        if unknown:
            raise TypeError(f"solve: unknown option(s) {unknown}; valid options: "
                            f"{sorted(SOLVER_FIELDS)}")
        return dataclasses.replace(self, **overrides) if overrides else self


SOLVER_FIELDS = tuple(f.name for f in dataclasses.fields(SolverConfig))
# The settings the commands expose as flags (``--lambda-s`` for lambda_s), in this order.
COMMAND_LINE_SETTINGS = tuple(f.name for f in dataclasses.fields(SolverConfig)
                              if f.metadata["command_line"])


def setting_help(name: str) -> str:
    """The help text of a solver setting (what its flag says in every command)."""
    return next(f for f in dataclasses.fields(SolverConfig) if f.name == name).metadata["help"]
