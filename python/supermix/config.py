"""The solver's settings in one typed, frozen place: their defaults are written here once and
checked here once, when a ``SolverConfig`` is made.

``supermix.solve(teacher, images, config, **overrides)`` and the ``SuperMix`` mixer take one;
``config.replace(max_iters=20)`` gives a changed copy (checked again). Checks that need the
data (k against the batch size, the mask grid against the image size) stay in ``solve``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = ["METHODS", "DEFAULT_METHOD", "SolverConfig", "SOLVER_FIELDS"]

METHODS = ("margin_gd", "newton_sp", "newton", "sgd")
# The method that solve, the mixers and generate use when none is named.
DEFAULT_METHOD = "margin_gd"


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

    k: int = 2
    alpha: float = 3.0
    lambda_s: float = 25.0
    sigma: float = 1.0
    mask_size: int | tuple[int, int] = 8
    max_iters: int = 50
    min_iters: int = 0
    method: str = DEFAULT_METHOD
    lr: float = 0.1
    lambda_tv: float = 250.0
    backend: str | None = None
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    def __post_init__(self):
        size = self.mask_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        # Its range (1x1 up to the image size) is checked by solve, which sees the images.
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
            raise ValueError(f"solve: mask_size must be an int or a pair (h, w) of ints, got "
                             f"{self.mask_size!r}")
        object.__setattr__(self, "mask_size", (int(size[0]), int(size[1])))
        if self.method not in METHODS:
            raise ValueError(f"solve: method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 2:
            raise ValueError(f"solve: k must be an int >= 2, got {self.k!r}")
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
                raise ValueError(f"solve: {name} must be a finite number {expected}, got {value!r}")
        if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool) or self.max_iters < 0:
            raise ValueError(f"solve: max_iters must be an int >= 0, got {self.max_iters!r}")
        if (not isinstance(self.min_iters, int) or isinstance(self.min_iters, bool)
                or not 0 <= self.min_iters <= self.max_iters):
            raise ValueError(f"solve: min_iters must be an int in [0, max_iters={self.max_iters}], "
                             f"got {self.min_iters!r}")
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
