"""One preparation for every training command: the output folder and its lock, the model and
its optimiser, the loop's state, the log's start record and the resume."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..runtime import DistInfo
from .loop import SGDSettings, setup_model
from .resume import check_out, must_match, start_record, try_resume
from .state import TrainState

__all__ = ["RunSettings", "prepare_run"]


@dataclass(frozen=True)
class RunSettings:
    """What a training run is, besides its data and its loss.

    name: the command ("train-teacher", "distill", "train"), in the log and the progress bar;
    out: the run's folder; resume: continue from its checkpoint.pt if there is one;
    arch, seed, channels_last, sgd: the model, its initialisation and its optimiser;
    epochs, decay_epochs, decay_rate, steps_per_epoch: the (scaled) schedule, or ``lr_at``
    (epoch, step) -> lr for a per-step one; eval_every, amp, show_progress, stop_after: the loop;
    may_change: settings a resume may change besides the runtime ones.
    """

    name: str
    out: Path
    arch: str
    seed: int
    sgd: SGDSettings
    epochs: int
    steps_per_epoch: int
    decay_epochs: tuple[int, ...] = ()
    decay_rate: float = 1.0
    resume: bool = False
    channels_last: bool = True
    eval_every: int = 1
    amp: str = "none"
    show_progress: bool = True
    stop_after: int | None = None
    lr_at: Callable[[int, int], float] | None = None
    may_change: tuple[str, ...] = ()


def prepare_run(run: RunSettings, num_classes: int, in_channels: int, info: DistInfo,
                run_args: dict, config: dict, **record) -> TrainState:
    """The output folder (locked), the model and SGD, the state, its log's ``start`` record
    (``record`` added) and, with ``run.resume``, the checkpoint loaded into it.

    ``run_args``: the arguments recorded and compared on resume; ``config``: the model config
    its checkpoints carry.

    Raises:
        UsageError: an unwritable or locked folder, or a checkpoint made with other settings.
    """
    out = check_out(Path(run.out), run.resume, info)
    model, module, optimizer = setup_model(run.arch, num_classes, in_channels, info, run.seed,
                                           run.channels_last, run.sgd)
    state = TrainState(
        model=model, module=module, optimizer=optimizer, info=info, out=out, config=config,
        run_args=run_args, epochs=run.epochs, decay_epochs=list(run.decay_epochs),
        lr=run.sgd.lr, decay_rate=run.decay_rate, steps_per_epoch=run.steps_per_epoch,
        eval_every=run.eval_every, amp=run.amp, show_progress=run.show_progress,
        stop_after=run.stop_after, name=run.name, lr_at=run.lr_at, seed=run.seed,
        channels_last=run.channels_last)
    state.start_record = start_record(run.name, run_args, config, info, **record)
    if run.resume:
        try_resume(state, [k for k in must_match(run_args) if k not in run.may_change])
    return state
