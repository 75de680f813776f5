"""Argument types and the groups of flags that several commands share.

A command module builds its parser from these groups and its own flags, so a flag that means
the same thing in two commands is spelled, checked and documented once.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import fields

from ..config import COMMAND_LINE_SETTINGS, METHODS, SolverConfig, setting_help
from ..data import IMAGEFOLDER_IMAGE_SIZE
from ..errors import UsageError
from ..training.schedule import SCHEDULE_DEFAULTS, SCHEDULE_PRESETS, resolve_schedule

__all__ = [
    "positive_int",
    "non_negative_float",
    "int_list",
    "DATA_HELP",
    "add_teacher_argument",
    "add_data_arguments",
    "add_image_size_argument",
    "add_threads_argument",
    "add_schedule_arguments",
    "add_runtime_arguments",
    "add_solver_arguments",
    "solver_flag",
    "solver_config",
    "resolve_schedule_flags",
    "sgd_settings",
    "labelled_data",
    "run_training",
    "run_settings",
]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated non-negative integers, e.g. ``200,300,400``."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs like 200,300,400, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected epochs >= 0, got {text!r}")
    return sorted(values)


DATA_HELP = "data spec: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, imagefolder:DIR"


def add_teacher_argument(g) -> None:
    """``--teacher``: a checkpoint, by default the shipped one."""
    g.add_argument("--teacher", default=None,
                   help="teacher checkpoint (default: the shipped Fashion-MNIST ResNet-20)")


def add_data_arguments(g, default: str | None = "fashion-mnist", default_help: str = "",
                       root_help: str = "folder of the data set (overrides the spec's)",
                       download: bool = False, as_cifar: bool = False,
                       image_size: bool = False) -> None:
    """``--data`` and ``--data-root``, and optionally ``--download``, ``--as-cifar`` and
    ``--image-size``."""
    g.add_argument("--data", default=default, help=DATA_HELP + default_help)
    g.add_argument("--data-root", default=None, help=root_help)
    if download:
        g.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    if as_cifar:
        g.add_argument("--as-cifar", action="store_true",
                       help="Fashion-MNIST as 3x32x32 (pad 2, repeat channels)")
    if image_size:
        add_image_size_argument(g)


def add_image_size_argument(g) -> None:
    """``--image-size``: the side of ImageFolder crops."""
    g.add_argument("--image-size", type=positive_int, default=IMAGEFOLDER_IMAGE_SIZE,
                   help="crop size for imagefolder data (default %(default)s)")


def add_threads_argument(g, help_more: str = "") -> None:
    """``--threads``: torch's intra-op CPU threads."""
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice" + help_more + ")")


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """Optimiser and schedule flags; None defaults are filled by :func:`resolve_schedule_flags`."""
    g = p.add_argument_group("schedule (paper sec. 4)")
    # dest "preset": the name runs have always recorded in their logs and checkpoints.
    g.add_argument("--schedule-preset", "--preset", dest="preset", choices=sorted(SCHEDULE_PRESETS),
                   default=None,
                   help="the paper's settings: cifar100 (batch 128, 600 epochs, decays "
                        "200/300/400/500) or imagenet (batch 256); explicit flags override")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help=f"passes over the labelled images (default {SCHEDULE_DEFAULTS['epochs']}); "
                        f"scaled by n/L with a mixed set, see --no-scale-epochs")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"global batch (split over torchrun ranks; default "
                        f"{SCHEDULE_DEFAULTS['batch_size']}); distill: real images, as many mixed")
    g.add_argument("--lr", type=non_negative_float, default=None,
                   help=f"initial learning rate (default {SCHEDULE_DEFAULTS['lr']})")
    g.add_argument("--momentum", type=non_negative_float, default=None, help="default 0.9")
    g.add_argument("--wd", type=non_negative_float, default=None,
                   help="weight decay (default 5e-4)")
    g.add_argument("--lr-decay-epochs", type=int_list, default=None,
                   help="epochs (in --epochs units) where the lr is multiplied by "
                        "--lr-decay-rate (default: 1/3, 1/2, 2/3, 5/6 of --epochs)")
    g.add_argument("--lr-decay-rate", type=non_negative_float, default=None, help="default 0.1")
    g.add_argument("--no-scale-epochs", action="store_true",
                   help="do not scale --epochs and --lr-decay-epochs by n/L (see docs)")
    g.add_argument("--seed", type=int, default=0, help="default %(default)s")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """Output, resume, device, precision, limits and progress flags."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder (checkpoint.pt, model.pt, "
                                               "log.jsonl)")
    g.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.pt (starts fresh if there is none)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N (under "
                                                    "torchrun each rank takes cuda:LOCAL_RANK)")
    g.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16 autocast for forward passes (GPUs; default none)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for models and batches (default on)")
    add_threads_argument(g)
    g.add_argument("--workers", type=int, default=4,
                   help="DataLoader workers (ImageFolder data only; in-memory data uses "
                        "none; default %(default)s)")
    g.add_argument("--limit-train", type=positive_int, default=None,
                   help="use only the first N labelled training images (data-limited setting)")
    g.add_argument("--limit-mixed", type=positive_int, default=None,
                   help="use only the first N images of the generated set")
    g.add_argument("--limit-test", type=positive_int, default=None,
                   help="evaluate on the first N test images only")
    g.add_argument("--limit-steps", type=positive_int, default=None,
                   help="at most N steps per epoch (smoke tests)")
    g.add_argument("--eval-every", type=positive_int, default=1,
                   help="evaluate on the test split every N epochs (and after the last; "
                        "default 1)")
    g.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after N epochs in this invocation, leaving a checkpoint that "
                        "--resume continues (time-limited job slots)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")




def solver_flag(setting: str) -> str:
    """The flag of a solver setting: ``lambda_s`` -> ``--lambda-s``."""
    return "--" + setting.replace("_", "-")


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_solver_arguments(g, settings=COMMAND_LINE_SETTINGS, *, defaults: dict | None = None,
                         scope: str = "") -> None:
    """Add the flags of the solver ``settings`` (SolverConfig fields) to ``g``, their help text
    and types from the config, so that every command spells, types and documents a setting
    the same way. Every flag defaults to None ("not given"); the help shows ``defaults[name]``
    (default: SolverConfig's). ``scope`` prefixes the help, e.g. "online supermix: ". The values
    are checked by SolverConfig (see :func:`solver_config`), not by argparse."""
    declared = {f.name: f.default for f in fields(SolverConfig)}
    for name in settings:
        default = (defaults or {}).get(name, declared[name])
        # A setting parses as its declared default's type (mask_size: an int side).
        options = dict(choices=METHODS) if name == "method" else dict(type=type(declared[name]))
        g.add_argument(solver_flag(name), default=None, **options,
                       help=f"{scope}{setting_help(name)} (default {_shown(default)})")


def solver_config(values: dict, base: SolverConfig | None = None) -> SolverConfig:
    """``base`` (default SolverConfig()) with the given ``values`` (None: not given), checked.

    Raises:
        SettingError: a value out of range (the command line names its flag).
    """
    return (base or SolverConfig()).replace(
        **{name: value for name, value in values.items() if value is not None})


def resolve_schedule_flags(args: argparse.Namespace) -> None:
    """Fill the unset schedule flags from ``--schedule-preset``, then the defaults
    (``training.resolve_schedule``), in ``args``: the run records the values it used."""
    keys = (*SCHEDULE_DEFAULTS, "lr_decay_epochs")
    values = resolve_schedule(args.preset, **{key: getattr(args, key) for key in keys})
    for key, value in values.items():
        setattr(args, key, value)


def sgd_settings(args: argparse.Namespace):
    """The optimiser the flags name (``--lr``, ``--momentum``, ``--wd``, ``--nesterov``)."""
    from ..training import SGDSettings

    return SGDSettings(lr=args.lr, momentum=args.momentum, wd=args.wd,
                       nesterov=bool(getattr(args, "nesterov", False)))


def labelled_data(args: argparse.Namespace, spec: str | None = None, **options):
    """The data the shared flags name (``--data``, ``--data-root``, ``--limit-train``,
    ``--limit-test``, ``--download``, ``--image-size``, ``--workers``, ``--as-cifar``); ``spec``
    and ``options`` override them."""
    from ..training import LabelledData

    kwargs = dict(as_cifar=getattr(args, "as_cifar", False), limit_train=args.limit_train,
                  limit_test=args.limit_test, download=args.download,
                  image_size=args.image_size, workers=args.workers)
    kwargs.update(options)
    return LabelledData(spec or args.data, args.data_root, **kwargs)


def run_training(args: argparse.Namespace, body) -> int:
    """Run a training command's ``body(args, info)`` in its process group (``--device``) with
    ``--threads``, after the checks every training command shares."""
    from ..training import run_command

    if args.workers < 0:
        raise UsageError(f"--workers: expected >= 0, got {args.workers}")
    return run_command(lambda info: body(args, info), args.device, args.threads)


def run_settings(args: argparse.Namespace, name: str, arch: str, default_out: str, epochs: int,
                 decay_epochs, steps_per_epoch: int):
    """The run the shared schedule and run flags describe (train and distill), with the
    command's (scaled) schedule."""
    from pathlib import Path

    from ..training import RunSettings

    return RunSettings(
        name=name, out=Path(args.out or default_out), arch=arch, seed=args.seed,
        sgd=sgd_settings(args), epochs=epochs, steps_per_epoch=steps_per_epoch,
        decay_epochs=tuple(decay_epochs), decay_rate=args.lr_decay_rate, resume=args.resume,
        channels_last=args.channels_last, eval_every=args.eval_every, amp=args.amp,
        show_progress=not args.no_progress, stop_after=args.stop_after)
