"""The state of a training run: what the epoch loop runs and what a checkpoint holds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..runtime import DistInfo

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Everything the epoch loop needs besides the data and the loss."""

    model: nn.Module                 # the network (unwrapped), what checkpoints hold
    module: nn.Module                # what the step calls: the model or its DDP wrapper
    optimizer: torch.optim.Optimizer
    info: DistInfo
    out: Path
    config: dict                     # model config for save_checkpoint
    run_args: dict                   # arguments recorded and compared on resume
    epochs: int                      # (scaled) epochs of this run
    decay_epochs: list[int]          # (scaled)
    lr: float
    decay_rate: float
    steps_per_epoch: int
    eval_every: int = 1
    amp: str = "none"
    show_progress: bool = True
    start_epoch: int = 0
    history: list = field(default_factory=list)
    elapsed: float = 0.0
    start_record: dict = field(default_factory=dict)
    resumes: list = field(default_factory=list)  # {"after_epoch", "command_line"} per --resume
    name: str = "train"
    stop_after: int | None = None    # epochs to run in this invocation (None: all)
    seed: int = 0                    # the run's seed: each epoch reseeds from (seed, epoch, rank)
    channels_last: bool = False      # the memory format of the evaluation batches
    # Per-step lr hook: lr_at(epoch, step) -> the lr of that step (None: the step schedule of
    # lr, decay_epochs and decay_rate, set once per epoch).
    lr_at: Callable[[int, int], float] | None = None
