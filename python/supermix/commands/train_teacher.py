"""``supermix train-teacher``: supervised training of a teacher network.

SGD with momentum and weight decay, a cosine (per iteration) or step learning-rate schedule,
random crop + horizontal flip (optionally RandAugment), test accuracy after every epoch.

Fixed-size data sets (Fashion-MNIST, CIFAR) are held in memory as one uint8 tensor and
augmented a whole batch at a time in the main process (:class:`supermix.data.TensorLoader`);
on a CPU that is far faster than a DataLoader with per-sample PIL transforms. RandAugment and
ImageFolder trees go through a ``DataLoader`` with ``--workers`` processes.

Files in ``--out``:

* ``checkpoint.pt`` -- written atomically after every epoch: model, optimizer, scheduler, epoch,
  RNG states, history and elapsed time. ``--resume`` continues from it (with ``--epochs`` larger
  than before, the cosine schedule is stretched to the new length from the current step).
* ``model.pt`` -- final weights + config, loadable by :func:`supermix.checkpoint.load_teacher`.
* ``card.json`` -- architecture, data, test accuracy, command line, seed, epochs, training time,
  library versions.

``--export PATH`` also writes the final weights to PATH and the card beside it (PATH with
``.json``), which is how the shipped default teacher was produced.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import data as sm_data
from . import models
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .errors import UsageError
from .runtime import progress, resolve_device
from .training import non_negative_float, positive_int

__all__ = ["add_parser", "run", "evaluate"]

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
CARD_NAME = "card.json"
# Arguments that must match between a checkpoint and a --resume run.
_RESUME_MUST_MATCH = ("arch", "data", "as_cifar", "batch_size", "seed", "limit_train")


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
    p.add_argument("--data", default="fashion-mnist",
                   help="data spec: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, "
                        "imagefolder:DIR")
    p.add_argument("--data-root", default=None, help="folder of the data set (overrides the spec)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    p.add_argument("--as-cifar", action="store_true",
                   help="Fashion-MNIST as 3x32x32 (pad 2, repeat channels)")
    p.add_argument("--image-size", type=positive_int, default=224,
                   help="crop size for imagefolder data")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=non_negative_float, default=0.1, help="peak learning rate")
    p.add_argument("--momentum", type=non_negative_float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--wd", type=non_negative_float, default=5e-4, help="weight decay")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="cosine: per-iteration cosine decay to 0; step: x gamma at milestones")
    p.add_argument("--milestones", default=None,
                   help="step schedule: comma-separated epochs (default: 50%% and 75%% of "
                        "--epochs)")
    p.add_argument("--gamma", type=non_negative_float, default=0.1)
    p.add_argument("--warmup-epochs", type=non_negative_float, default=0.0,
                   help="linear warm-up length (may be fractional)")
    p.add_argument("--label-smoothing", type=non_negative_float, default=0.0)
    p.add_argument("--randaugment", action="store_true",
                   help="add torchvision RandAugment (per-sample DataLoader path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder (default runs/teacher-<arch>-<data>)")
    p.add_argument("--export", default=None,
                   help="also write the final weights to this .pt file and the card beside it")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.pt (starts fresh if there is none)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (the in-memory path does not use them)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (faster convolutions on CPU and GPU)")
    p.add_argument("--limit-train", type=positive_int, default=None,
                   help="train on the first N images only (smoke tests)")
    p.add_argument("--limit-test", type=positive_int, default=None,
                   help="evaluate on the first N test images only")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=run)
    return p


# ----------------------------------------------------------------------------------------------
# Data


class _Data:
    """Train/test iterables plus what the config needs to know about the inputs."""

    def __init__(self, args, generator: torch.Generator, memory_format):
        name, root = sm_data.parse_spec(args.data, args.data_root)
        self.name, self.root = name, root
        self.classes = list(sm_data.class_names(args.data, args.data_root))
        self.num_classes = len(self.classes)
        self.mean, self.std = (list(v) for v in sm_data.stats(name))
        fixed_size = name in ("fashion-mnist", "cifar10", "cifar100")
        if args.as_cifar and name != "fashion-mnist":
            raise UsageError(f"--as-cifar: only for fashion-mnist, got --data {args.data!r}")
        if fixed_size and not args.randaugment:
            self._tensor_loaders(args, generator, memory_format)
        else:
            self._dataloaders(args, generator)

    def _tensor_loaders(self, args, generator, memory_format):
        train_x, train_y = sm_data.load_uint8(self.name, True, self.root, args.as_cifar,
                                              args.download)
        test_x, test_y = sm_data.load_uint8(self.name, False, self.root, args.as_cifar,
                                            args.download)
        if args.limit_train:
            train_x, train_y = train_x[:args.limit_train], train_y[:args.limit_train]
        if args.limit_test:
            test_x, test_y = test_x[:args.limit_test], test_y[:args.limit_test]
        repeat = 3 if args.as_cifar else None
        # Crop padding as in the literature: 4 pixels at 32x32, 2 at Fashion-MNIST's 28x28.
        padding = 4 if train_x.shape[-1] == 32 else 2
        self.in_channels = 3 if args.as_cifar else train_x.shape[1]
        self.input_size = [self.in_channels, train_x.shape[2], train_x.shape[3]]
        self.train = sm_data.TensorLoader(
            train_x, train_y, args.batch_size, shuffle=True, padding=padding, flip=True,
            stats_name=self.name, repeat_channels=repeat, generator=generator,
            memory_format=memory_format)
        self.test = sm_data.TensorLoader(
            test_x, test_y, 500, stats_name=self.name, repeat_channels=repeat,
            memory_format=memory_format)
        self.loader_kind = "in-memory uint8 tensors, batched crop+flip"

    def _dataloaders(self, args, generator):
        from torch.utils.data import DataLoader, Subset

        kwargs = dict(root=self.root, as_cifar=args.as_cifar, download=args.download,
                      image_size=args.image_size)
        train_ds = sm_data.build_dataset(self.name, True, randaugment=args.randaugment, **kwargs)
        test_ds = sm_data.build_dataset(self.name, False, **kwargs)
        if args.limit_train:
            train_ds = Subset(train_ds, range(min(args.limit_train, len(train_ds))))
        if args.limit_test:
            test_ds = Subset(test_ds, range(min(args.limit_test, len(test_ds))))
        self.in_channels, *hw = sm_data.image_shape(self.name, args.as_cifar)
        if self.name == "imagefolder":
            hw = [args.image_size, args.image_size]
        self.input_size = [self.in_channels, *hw]
        workers = max(0, args.workers)
        self.train = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True,
                                num_workers=workers, generator=generator, drop_last=False,
                                persistent_workers=workers > 0)
        self.test = DataLoader(test_ds, batch_size=256, num_workers=workers)
        self.loader_kind = f"DataLoader, {workers} workers, per-sample transforms"


# ----------------------------------------------------------------------------------------------
# Schedule


def _lr_lambda(args, steps_per_epoch: int):
    total = max(1, args.epochs * steps_per_epoch)
    warmup = int(round(args.warmup_epochs * steps_per_epoch))
    if args.schedule == "step":
        if args.milestones:
            try:
                milestones = sorted(int(m) for m in args.milestones.split(","))
            except ValueError:
                raise UsageError(f"--milestones: expected comma-separated epochs like 15,22, "
                                 f"got {args.milestones!r}") from None
        else:
            milestones = [int(args.epochs * 0.5), int(args.epochs * 0.75)]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        epoch = step // steps_per_epoch
        return args.gamma ** sum(epoch >= m for m in milestones)

    return factor


# ----------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` over ``loader``."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.shape[0]
    return correct / max(1, n), loss_sum / max(1, n)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state(),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run(args) -> int:
    """Train as ``args`` (from :func:`add_parser`) says; returns the process exit status."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    data_name = sm_data.parse_spec(args.data, args.data_root)[0]
    out = Path(args.out or f"runs/teacher-{args.arch}-{data_name}")
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not args.resume:
        raise UsageError(f"--out: {out} already holds {CHECKPOINT_NAME}; pass --resume to "
                         f"continue it or choose another --out")
    if args.workers < 0:
        raise UsageError(f"--workers: expected >= 0, got {args.workers}")

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    data = _Data(args, generator, memory_format)
    model = models.create(args.arch, num_classes=data.num_classes, in_channels=data.in_channels)
    model = model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd, nesterov=args.nesterov)
    steps_per_epoch = len(data.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args, steps_per_epoch))

    config = {
        "arch": args.arch, "num_classes": data.num_classes, "in_channels": data.in_channels,
        "data": data_name, "as_cifar": bool(args.as_cifar), "input_size": data.input_size,
        "mean": data.mean, "std": data.std, "class_names": data.classes,
    }
    run_args = {k: v for k, v in vars(args).items() if k != "func"}
    command = getattr(args, "command_line", None) or "supermix " + " ".join(sys.argv[1:])
    start_epoch, history, elapsed, commands = 0, [], 0.0, []
    if args.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        saved_args = ckpt.get("args", {})
        for key in _RESUME_MUST_MATCH:
            if key in saved_args and saved_args[key] != run_args.get(key):
                raise UsageError(f"--{key.replace('_', '-')}: the checkpoint in {out} was made "
                                 f"with {saved_args[key]!r}, got {run_args.get(key)!r}")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], generator)
        start_epoch, history, elapsed = ckpt["epoch"], list(ckpt["history"]), ckpt["elapsed_s"]
        commands = list(ckpt.get("commands", []))
        print(f"resuming {ckpt_path} after epoch {start_epoch} "
              f"(test acc {history[-1]['test_acc']:.4f})" if history else
              f"resuming {ckpt_path}", flush=True)
        if start_epoch > args.epochs:
            raise UsageError(f"--epochs: the checkpoint in {out} already has {start_epoch} "
                             f"epochs, got --epochs {args.epochs}; ask for at least as many")
    elif args.resume:
        print(f"--resume: no {ckpt_path} yet, starting from scratch", flush=True)

    commands.append(command)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train-teacher: {args.arch} ({n_params / 1e6:.2f}M params) on {args.data}, "
          f"{steps_per_epoch} steps/epoch of {args.batch_size}, {args.epochs} epochs, "
          f"{args.schedule} lr {args.lr}, device {device}, {torch.get_num_threads()} threads, "
          f"{data.loader_kind}", flush=True)

    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        bar = progress(steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}",
                       not args.no_progress)
        for x, y in data.train:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1}; "
                                   f"lower --lr")
            seen += y.shape[0]
            loss_sum += loss.item() * y.shape[0]
            correct += (logits.argmax(1) == y).sum().item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            refresh=False)
        bar.close()
        train_time = time.perf_counter() - t0
        test_acc, test_loss = evaluate(model, data.test, device)
        elapsed += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                  "train_acc": correct / max(1, seen), "test_loss": test_loss,
                  "test_acc": test_acc, "lr_end": optimizer.param_groups[0]["lr"],
                  "epoch_s": round(train_time, 2)}
        history.append(record)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f} "
              f"acc {record['train_acc']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
              f"{train_time:.1f}s", flush=True)
        save_checkpoint(ckpt_path, model, config, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), epoch=epoch + 1,
                        rng=_rng_state(generator), history=history, elapsed_s=elapsed,
                        args=run_args, commands=commands)

    final = history[-1]
    config["test_accuracy"] = final["test_acc"]
    model = model.to(memory_format=torch.contiguous_format)
    card = _card(args, config, history, elapsed, n_params, data, device, commands)
    save_checkpoint(out / MODEL_NAME, model, config)
    atomic_write_text(json.dumps(card, indent=2) + "\n", out / CARD_NAME)
    if args.export:
        export = Path(args.export)
        save_checkpoint(export, model, config)
        atomic_write_text(json.dumps(card, indent=2) + "\n", export.with_suffix(".json"))
        print(f"exported {export} and {export.with_suffix('.json')}", flush=True)
    print(f"done: test accuracy {final['test_acc']:.4f} after {final['epoch']} epochs, "
          f"{elapsed / 60:.1f} min; wrote {out / MODEL_NAME} and {out / CARD_NAME}", flush=True)
    return 0


def _card(args, config, history, elapsed, n_params, data, device, commands) -> dict:
    import torchvision

    final = history[-1]
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
        "test_accuracy": final["test_acc"],
        "test_loss": final["test_loss"],
        "test_images": len(data.test.dataset) if hasattr(data.test, "dataset")
        else int(data.test.labels.shape[0]),
        "train_images": len(data.train.dataset) if hasattr(data.train, "dataset")
        else int(data.train.labels.shape[0]),
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
        "training_time_s": round(elapsed, 1),
        "history": history,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
