"""``supermix train-teacher``: supervised training of a teacher network.

SGD with momentum and weight decay, a cosine (per iteration) or step learning-rate schedule,
random crop + horizontal flip (optionally RandAugment), test top-1/top-5 after every epoch. The
data, the loop, the evaluation, resume and torchrun are :mod:`supermix.training`'s, as for
``distill`` and ``train``: fixed-size data sets are held in memory and augmented a batch at a
time, ImageFolder trees go through a ``DataLoader`` with ``--workers`` processes.

Files in ``--out``: ``checkpoint.pt`` (written atomically after every epoch; ``--resume``
continues from it, and with ``--epochs`` larger than before the cosine schedule is stretched to
the new length from the current step; any other changed setting, ``--lr`` say, is refused as
``distill`` and ``train`` refuse it), ``model.pt`` (final weights + config, loadable by
:func:`supermix.teachers.load_teacher`), ``log.jsonl`` (the shared log) and ``card.json``
(architecture, data, test accuracy, command lines, seed, epochs, training time, versions).

``--export PATH`` also writes the final weights to PATH and the card beside it (PATH with
``.json``), which is how the shipped default teacher was produced.
"""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from . import args as sargs
from .. import models
from .. import training as tr
from ..checkpoint import atomic_write_text, save_checkpoint
from ..runtime import DistInfo, memory_format

__all__ = ["add_parser", "run"]

CARD_NAME = "card.json"
SCHEDULES = ("cosine", "step")
# Arguments a --resume run may change besides the runtime ones (supermix.training.RUNTIME_ARGS):
# --epochs may grow (the cosine schedule is stretched), --export names where to copy the result.
# Every other argument (--lr, --wd, --schedule, ...) must match the checkpoint's, as for distill
# and train.
RESUME_MAY_CHANGE = ("epochs", "export")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train-teacher`` subcommand."""
    p = subparsers.add_parser(
        "train-teacher",
        help="train a teacher network (SGD, cosine/step schedule, crop+flip)",
        description="Train a classifier to serve as the SuperMix teacher.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="resnet20",
                   help="model name, see supermix.models.available() (e.g. resnet20, wrn_40_2, "
                        "resnet32x4, tv:resnet50)")
    sargs.add_data_arguments(p, download=True, as_cifar=True, image_size=True)
    p.add_argument("--epochs", type=sargs.positive_int, default=30)
    p.add_argument("--batch-size", type=sargs.positive_int, default=128,
                   help="global batch (split over torchrun ranks)")
    p.add_argument("--lr", type=sargs.non_negative_float, default=0.1, help="peak learning rate")
    p.add_argument("--momentum", type=sargs.non_negative_float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--wd", type=sargs.non_negative_float, default=5e-4, help="weight decay")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="cosine: per-iteration cosine decay to 0; step: x gamma at milestones")
    p.add_argument("--milestones", type=sargs.int_list, default=None,
                   help="step schedule: comma-separated epochs (default: 50%% and 75%% of "
                        "--epochs)")
    p.add_argument("--gamma", type=sargs.non_negative_float, default=0.1)
    p.add_argument("--warmup-epochs", type=sargs.non_negative_float, default=0.0,
                   help="linear warm-up length (may be fractional)")
    p.add_argument("--label-smoothing", type=sargs.non_negative_float, default=0.0)
    p.add_argument("--randaugment", action="store_true", help="add torchvision RandAugment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder (default runs/teacher-<arch>-<data>)")
    p.add_argument("--export", default=None,
                   help="also write the final weights to this .pt file and the card beside it")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.pt (starts fresh if there is none)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (the in-memory path does not use them)")
    sargs.add_threads_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (faster convolutions on CPU and GPU)")
    p.add_argument("--limit-train", type=sargs.positive_int, default=None,
                   help="train on the first N images only (smoke tests)")
    p.add_argument("--limit-test", type=sargs.positive_int, default=None,
                   help="evaluate on the first N test images only")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` (from :func:`add_parser`) says; returns the process exit status."""
    return sargs.run_training(args, _run)


def _run(args, info: DistInfo) -> int:
    data = sargs.labelled_data(args, randaugment=args.randaugment)
    models.check_name(args.arch)  # before the step checks; the model is built later
    device = info.device
    batch_format = memory_format(args.channels_last)
    n = data.num_train
    steps = tr.EpochPlan.checked_steps(n, args.batch_size, info.world)
    factor = tr.warmup_lr_factor(args.epochs, steps, args.warmup_epochs, args.schedule,
                                 args.gamma, args.milestones)
    run = tr.RunSettings(
        name="train-teacher", out=Path(args.out or f"runs/teacher-{args.arch}-{data.name}"),
        arch=args.arch, seed=args.seed, sgd=sargs.sgd_settings(args), epochs=args.epochs,
        steps_per_epoch=steps, resume=args.resume, channels_last=args.channels_last,
        show_progress=not args.no_progress, may_change=RESUME_MAY_CHANGE,
        lr_at=lambda epoch, i: args.lr * factor(epoch * steps + i))
    state = tr.prepare_run(run, data.num_classes, data.shape[0], info,
                           tr.run_arguments(vars(args)), data.model_config(args.arch),
                           labelled_images=n, epochs=args.epochs, steps_per_epoch=steps)
    model, module, out = state.model, state.module, state.out
    n_params = sum(p.numel() for p in model.parameters())
    if info.is_main:
        print(f"train-teacher: {args.arch} ({n_params / 1e6:.2f}M params) on {args.data} "
              f"({n} images), {steps} steps/epoch of {args.batch_size}, {args.epochs} epochs, "
              f"{args.schedule} lr {args.lr}; {info.world} process(es) on {device}, "
              f"{torch.get_num_threads()} threads", flush=True)

    def batches(epoch: int):
        plan = tr.EpochPlan(n, args.batch_size, args.seed, epoch, info.world, info.rank)
        yield from data.stream(plan, lambda s: s, args.seed, epoch, info.rank, device,
                               batch_format)

    def step(batch):
        x, y = batch
        logits = module(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
        return loss, {}, y.shape[0], (logits.detach().argmax(dim=1) == y).sum(), y.shape[0]

    end = tr.train(state, batches, step, lambda: data.test_batches(info, batch_format))
    if info.is_main and not end.get("stopped"):
        _write_card(args, state, data, n_params, out)
    return 0


def _write_card(args, state: tr.TrainState, data: tr.LabelledData, n_params: int,
                out: Path) -> None:
    """``card.json`` beside ``model.pt`` (and, with ``--export``, both at the export path)."""
    commands = [state.start_record.get("command_line")] + [
        r.get("command_line") for r in sorted(state.resumes, key=lambda r: r["after_epoch"])]
    card = _card(args, state, data, n_params, commands)
    text = json.dumps(card, indent=2) + "\n"
    atomic_write_text(text, out / CARD_NAME)
    if args.export:
        export = Path(args.export)
        config = dict(state.config, test_accuracy=card["test_accuracy"])
        save_checkpoint(export, state.model.to(memory_format=torch.contiguous_format), config)
        atomic_write_text(text, export.with_suffix(".json"))
        print(f"exported {export} and {export.with_suffix('.json')}", flush=True)


def _card(args, state: tr.TrainState, data: tr.LabelledData, n_params: int,
          commands: list) -> dict:
    import torchvision

    final = state.history[-1]
    device = state.info.device
    config = state.config
    return {
        "architecture": args.arch,
        "parameters": n_params,
        "num_classes": config["num_classes"],
        "in_channels": config["in_channels"],
        "input_size": config["input_size"],
        "data": config["data"],
        "data_spec": args.data,
        "class_names": config["class_names"],
        "normalization": {"mean": config["mean"], "std": config["std"]},
        "test_accuracy": final["test_top1"],
        "test_top5": final["test_top5"],
        "test_loss": final["test_loss"],
        "test_images": data.num_test,
        "train_images": data.num_train,
        "epochs": final["epoch"],
        "seed": args.seed,
        "optimizer": {"name": "SGD", "lr": args.lr, "momentum": args.momentum,
                      "nesterov": args.nesterov, "weight_decay": args.wd,
                      "batch_size": args.batch_size, "schedule": args.schedule,
                      "warmup_epochs": args.warmup_epochs,
                      "label_smoothing": args.label_smoothing},
        "augmentation": "random crop (zero padding) + horizontal flip"
                        + (" + RandAugment" if args.randaugment else ""),
        "command": commands[-1],
        # Every invocation that trained this model, in order (more than one after --resume).
        "commands": commands,
        "training_time_s": round(state.elapsed, 1),
        "history": state.history,
        "world_size": state.info.world,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
