"""Shared machinery of the training commands (``supermix distill``, ``supermix train``).

Schedule (paper sec. 4)
    SGD, momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by ``--lr-decay-rate`` (0.1) at
    each of ``--lr-decay-epochs``. ``--preset cifar100`` is the paper's CIFAR-100 run (batch
    128, 600 epochs, decays at 200/300/400/500); ``--preset imagenet`` its ImageNet batch of 256
    (the paper gives no ImageNet schedule: 100 epochs decayed at 30/60/90 with weight decay 1e-4,
    torchvision's reference recipe, fill the gap). Without a preset the decays default to the
    paper's fractions 1/3, 1/2, 2/3, 5/6 of ``--epochs``.

Epochs with a mixed set (:func:`scale_schedule`)
    ``--epochs`` and ``--lr-decay-epochs`` count passes over the n labelled images, as if there
    were no mixed set. An epoch of a run with a mixed set of n' images is L slots long
    (distillation pairs a real and a mixed image per slot, L = max(n, n'); classification
    draws from the union, L = n + n'), so the run does ``round(E * n / L)`` epochs and decays
    at ``round(d * n / L)``: the number of iterations, about E * n / batch, stays fixed for
    every kappa = n' / n. The paper's example: kappa = 5, 600 epochs -> 120.
    ``--no-scale-epochs`` takes the numbers as given.

Batches and determinism (:class:`EpochPlan`, :class:`ImageBank`)
    ``--batch-size`` is the global batch. Epoch e visits a permutation of its L slots drawn
    from a generator seeded with (seed, e), and draws every random crop and flip of a global
    batch from a second generator seeded with (seed, e); rank r of w takes the positions
    r, r + w, ... of each global batch. So one process and w processes see the same global
    batches with the same augmentation, and a resumed run sees the batches it would have seen.
    Everything else random (online mixing, RandAugment, dropout, DataLoader workers) draws
    from per-rank generators reseeded with (seed, e, rank) at the start of every epoch.

Resume
    A checkpoint is written atomically after every epoch. Because every random stream of
    epoch e is re-derived from (seed, e, rank) when the epoch starts, the epoch number is the
    whole sampler and RNG position: ``--resume`` restores weights, optimizer state (momentum),
    the lr (a function of the epoch), the history and the elapsed time, and continues with
    exactly the next batch an uninterrupted run would have drawn.

Distributed (``torchrun --nproc_per_node N``)
    DistributedDataParallel over NCCL (GPUs) or gloo (CPUs), BatchNorm converted to
    SyncBatchNorm (on CPUs :class:`CpuSyncBatchNorm`, since torch's needs a GPU), metrics
    summed over ranks with ``all_reduce``, test set sharded, only rank 0 writes files.

Files in ``--out``: ``checkpoint.pt`` (resume state), ``model.pt`` (final weights + config,
loadable by :func:`supermix.checkpoint.load_teacher`), ``log.jsonl`` (one JSON object per line:
``start``, one ``epoch`` per epoch, ``end``).

``supermix train-teacher`` could share :func:`resolve_device`, :func:`evaluate` (which adds
top-5 and distributed reduction), :func:`progress` and the argument types
(:func:`positive_int`, :func:`non_negative_float`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .errors import MissingFileError, UsageError
from .mixed_set import GeneratedSet
from .runtime import (DistInfo, all_reduce_sum, autocast, derive_seed, init_distributed,
                      make_generator, progress, resolve_device, seed_everything,
                      shutdown_distributed)

__all__ = [
    "PRESETS",
    "DEFAULT_DECAY_FRACTIONS",
    "CHECKPOINT_NAME",
    "MODEL_NAME",
    "LOG_NAME",
    "positive_int",
    "non_negative_float",
    "int_list",
    "add_schedule_arguments",
    "add_runtime_arguments",
    "resolve_hparams",
    "scale_schedule",
    "step_lr",
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_sum",
    "CpuSyncBatchNorm",
    "convert_sync_batchnorm",
    "resolve_device",
    "derive_seed",
    "make_generator",
    "seed_everything",
    "crop_flip",
    "CropFlip",
    "ImageBank",
    "EpochPlan",
    "topk_correct",
    "evaluate",
    "autocast",
    "progress",
    "TrainState",
    "fit",
    "LabelledData",
    "bank_stream",
    "dataset_stream",
    "mixed_bank",
    "check_generated",
    "generated_notes",
    "try_resume",
    "write_log",
    "finish",
    "run_arguments",
    "must_match",
    "check_out",
    "prepare_model",
    "make_sgd",
]

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "log.jsonl"

# The paper's CIFAR-100 decays, 200/300/400/500 of 600 epochs, as fractions of the run.
DEFAULT_DECAY_FRACTIONS = (1 / 3, 1 / 2, 2 / 3, 5 / 6)

PRESETS: dict[str, dict[str, Any]] = {
    # Paper sec. 4: CIFAR-100, batch 128, 600 epochs decayed by 0.1 at 200, 300, 400, 500.
    "cifar100": {"batch_size": 128, "epochs": 600, "lr_decay_epochs": [200, 300, 400, 500],
                 "lr": 0.1, "momentum": 0.9, "wd": 5e-4, "lr_decay_rate": 0.1},
    # Paper sec. 4: ImageNet batch 256; the schedule is torchvision's reference recipe.
    "imagenet": {"batch_size": 256, "epochs": 100, "lr_decay_epochs": [30, 60, 90],
                 "lr": 0.1, "momentum": 0.9, "wd": 1e-4, "lr_decay_rate": 0.1},
}
_BUILTIN = {"batch_size": 128, "epochs": 30, "lr": 0.1, "momentum": 0.9, "wd": 5e-4,
            "lr_decay_rate": 0.1}


# ----------------------------------------------------------------------------------------------
# Arguments


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


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """Optimiser and schedule flags; None defaults are filled by :func:`resolve_hparams`."""
    g = p.add_argument_group("schedule (paper sec. 4)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the paper's settings: cifar100 (batch 128, 600 epochs, decays "
                        "200/300/400/500) or imagenet (batch 256); explicit flags override")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help=f"passes over the labelled images (default {_BUILTIN['epochs']}); "
                        f"scaled by n/L with a mixed set, see --no-scale-epochs")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"global batch (split over torchrun ranks; default "
                        f"{_BUILTIN['batch_size']}); distill: real images, as many mixed")
    g.add_argument("--lr", type=non_negative_float, default=None,
                   help=f"initial learning rate (default {_BUILTIN['lr']})")
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
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice)")
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


def resolve_hparams(args: argparse.Namespace) -> None:
    """Fill unset schedule flags from ``--preset``, then the built-in defaults (in place)."""
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    for key, default in _BUILTIN.items():
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


# ----------------------------------------------------------------------------------------------
# Devices and processes


def run_command(args, body: Callable[[Any, "DistInfo"], int]) -> int:
    """Run a training command's ``body(args, info)`` inside the torchrun process group (if any),
    after the settings every training command shares: threads, presets, data-loader workers."""
    info = init_distributed(args.device)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        resolve_hparams(args)
        if args.workers < 0:
            raise UsageError(f"--workers: expected >= 0, got {args.workers}")
        return body(args, info)
    finally:
        shutdown_distributed(info)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks (each rank's
    output feeds its own loss, so d(sum of losses)/d(input) is the sum of the gradients)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for gloo (CPU) jobs.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors. This computes the per-channel mean and then
    the biased variance of the global batch with two autograd-aware all-reduces (whose
    backward sums the gradients over ranks), so forward, backward and running statistics
    (unbiased variance, as BatchNorm) equal one process's BatchNorm over the concatenated
    batch up to float rounding. Outside training, or in a single process, it is a plain
    BatchNorm. Same parameters and buffers as BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_count = x.numel() // x.shape[1]
        sums = torch.cat([xf.sum(dims), xf.new_tensor([float(local_count)])])
        sums = all_reduce(sums)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                n = float(count)
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> ``nn.SyncBatchNorm`` (GPU) or :class:`CpuSyncBatchNorm` (CPU)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync(model)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module,
                                                                               CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out


# ----------------------------------------------------------------------------------------------
# Batches


@dataclass
class CropFlip:
    """Per-image random crop offsets (in [0, 2 * padding]) and flip coins for n images."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor

    @staticmethod
    def draw(n: int, padding: int, flip: bool, generator: torch.Generator) -> "CropFlip":
        """Draws in a fixed order (dy, dx, flip) so every rank draws the same global batch."""
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        coin = (torch.rand(n, generator=generator) < 0.5 if flip
                else torch.zeros(n, dtype=torch.bool))
        return CropFlip(dy, dx, coin)

    def select(self, index: torch.Tensor | slice) -> "CropFlip":
        return CropFlip(self.dy[index], self.dx[index], self.flip[index])


def crop_flip(images: torch.Tensor, params: CropFlip, padding: int) -> torch.Tensor:
    """Random crop after zero padding, then horizontal flip, with given per-image draws.

    images: [B,C,H,W] any dtype; returns the same shape and dtype (a new tensor). The same
    function as :func:`supermix.data.random_crop_flip`, with the randomness passed in.
    """
    b, c, h, w = images.shape
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = (params.dy.view(b, 1) + torch.arange(h)).view(b, 1, h, 1)
        cols = (params.dx.view(b, 1) + torch.arange(w)).view(b, 1, 1, w)
        out = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                     rows, cols]
    if bool(params.flip.any()):
        out = torch.where(params.flip.view(b, 1, 1, 1), out.flip(-1), out)
    return out


class ImageBank:
    """A split held in memory, batched by index with crop/flip, normalised on the device.

    Args:
        images: [N,C,H,W] uint8 (0..255) or float (pixels in [0, 1]).
        mean, std: per-channel normalisation (1 value broadcasts over channels).
        padding: random-crop zero padding; flip: random horizontal flip (both need draws).
        repeat_channels: repeat a single channel to this many after augmentation
            (Fashion-MNIST shown as 3x32x32).
        transform: optional per-image callable on uint8 [C,H,W] (RandAugment), applied after
            the crop/flip, drawing from the global torch RNG.
    """

    def __init__(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 padding: int = 0, flip: bool = False, repeat_channels: int | None = None,
                 transform: Callable | None = None):
        if images.ndim != 4:
            raise UsageError(f"images: expected [N, C, H, W], got {tuple(images.shape)}")
        self.images = images
        self.padding, self.flip = int(padding), bool(flip)
        self.repeat_channels = repeat_channels
        self.transform = transform
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the batches it makes."""
        c, h, w = self.images.shape[1:]
        if self.repeat_channels and c == 1:
            c = self.repeat_channels
        return int(c), int(h), int(w)

    @property
    def augments(self) -> bool:
        return self.padding > 0 or self.flip

    def draw(self, n: int, generator: torch.Generator) -> CropFlip | None:
        return CropFlip.draw(n, self.padding, self.flip, generator) if self.augments else None

    def batch(self, index: torch.Tensor, params: CropFlip | None = None,
              device: torch.device | str = "cpu",
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """Normalised float32 images [b,C,H,W] on ``device``."""
        x = self.images[index]
        if params is not None:
            x = crop_flip(x, params, self.padding)
        if self.transform is not None:
            if x.dtype != torch.uint8:
                x = x.float().mul(255).round_().clamp_(0, 255).to(torch.uint8)
            x = torch.stack([self.transform(img) for img in x]) if len(x) else x
        x = x.to(device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.repeat_channels and x.shape[1] == 1:
            x = x.expand(-1, self.repeat_channels, -1, -1)
        return x.contiguous(memory_format=memory_format)


class EpochPlan:
    """The slot order of one epoch and its global batches, identical on every rank.

    ``num_slots`` slots are permuted with a generator seeded by (seed, "order", epoch); step s
    takes positions [s * B, (s + 1) * B) of the permutation (global batch B, the last partial
    batch dropped); rank r of w takes every w-th slot of it, starting at r.
    """

    def __init__(self, num_slots: int, global_batch: int, seed: int, epoch: int,
                 world: int = 1, rank: int = 0, limit_steps: int | None = None):
        if global_batch % world:
            raise UsageError(f"--batch-size: the global batch must divide over {world} "
                             f"processes, got {global_batch}")
        if num_slots < global_batch:
            raise UsageError(f"--batch-size: {global_batch} is larger than the {num_slots} "
                             f"samples of an epoch")
        self.global_batch, self.world, self.rank = global_batch, world, rank
        self.order = torch.randperm(num_slots, generator=make_generator(seed, "order", epoch))
        self.steps = num_slots // global_batch
        if limit_steps is not None:
            self.steps = min(self.steps, limit_steps)

    @staticmethod
    def steps_for(num_slots: int, global_batch: int, limit_steps: int | None = None) -> int:
        steps = num_slots // global_batch
        return min(steps, limit_steps) if limit_steps is not None else steps

    def global_slots(self, step: int) -> torch.Tensor:
        return self.order[step * self.global_batch:(step + 1) * self.global_batch]

    def local(self, values):
        """This rank's part of a per-global-batch tensor (or CropFlip)."""
        index = slice(self.rank, None, self.world)
        return values.select(index) if isinstance(values, CropFlip) else values[index]


# ----------------------------------------------------------------------------------------------
# Evaluation


def topk_correct(logits: torch.Tensor, targets: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of rows whose target is among the top-k logits, per k (k clipped to classes).

    logits: [B,n]; targets: int64 [B]. Returns float64 [len(ks)].
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]).double()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, info: DistInfo | None = None, amp: str = "none",
             memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Top-1, top-5 and mean cross-entropy of ``model`` over ``batches`` (this rank's shard),
    summed over ranks. Returns ``{"top1", "top5", "loss", "images"}`` (accuracies in [0, 1])."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with _eval_mode(model):
        for x, y in batches:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            sums[:2] += topk_correct(logits, y)
            sums[2] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[3] += y.shape[0]
    if info is not None:
        all_reduce_sum(sums, info)
    n = max(float(sums[3]), 1.0)
    return {"top1": float(sums[0]) / n, "top5": float(sums[1]) / n, "loss": float(sums[2]) / n,
            "images": int(sums[3])}


def bank_stream(bank: ImageBank, targets: torch.Tensor, plan: EpochPlan,
                index_of: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
                device: torch.device, memory_format: torch.memory_format
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (images, targets) of every step of ``plan`` from an in-memory bank.

    ``index_of`` maps the global batch's slots to bank indices (-1: not from this bank). The
    crop/flip draws of the whole global batch come from ``generator`` at every step, so each
    rank draws the same ones and takes its own.
    """
    for step in range(plan.steps):
        index = index_of(plan.global_slots(step))
        params = bank.draw(index.shape[0], generator)
        index = plan.local(index)
        params = plan.local(params) if params is not None else None
        keep = index >= 0
        if not bool(keep.all()):
            index = index[keep]
            params = params.select(keep) if params is not None else None
        yield (bank.batch(index, params, device, memory_format),
               targets[index].to(device, non_blocking=True))


def _collate_or_none(items):
    from torch.utils.data import default_collate

    return default_collate(items) if items else (None, None)


def dataset_stream(dataset, plan: EpochPlan, index_of: Callable[[torch.Tensor], torch.Tensor],
                   workers: int, generator: torch.Generator, device: torch.device,
                   memory_format: torch.memory_format):
    """Like :func:`bank_stream` for a ``Dataset`` with per-sample transforms (ImageFolder),
    loaded by a ``DataLoader`` with ``workers`` processes; a step with no image from it yields
    (None, None). Augmentation draws come from the workers' RNG (seeded from ``generator``)."""
    from torch.utils.data import DataLoader

    lists = []
    for step in range(plan.steps):
        index = plan.local(index_of(plan.global_slots(step)))
        lists.append(index[index >= 0].tolist())
    loader = DataLoader(dataset, batch_sampler=lists, num_workers=max(0, workers),
                        collate_fn=_collate_or_none, generator=generator,
                        pin_memory=device.type == "cuda")
    for x, y in loader:
        if x is None:
            yield None, None
            continue
        yield (x.to(device, non_blocking=True).contiguous(memory_format=memory_format),
               y.to(device, non_blocking=True))


class LabelledData:
    """The labelled train split and the test split of a data spec, for the training commands.

    Fashion-MNIST and CIFAR are held in memory (:class:`ImageBank`, crop with 2 pixels of
    padding at 28x28 and 4 at 32x32, flip); ImageFolder trees use per-sample transforms
    through a ``DataLoader`` (RandomResizedCrop + flip). ``limit_train`` keeps the first N
    training images, ``limit_test`` the first N test images. ``mean``/``std`` (default: the
    data set's) normalise the in-memory path; ``randaugment`` adds RandAugment to the training
    images.
    """

    def __init__(self, spec: str, root: str | None = None, *, as_cifar: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 limit_train: int | None = None, limit_test: int | None = None,
                 randaugment: bool = False, download: bool = False, image_size: int = 224,
                 workers: int = 0):
        from . import data as sm_data

        self.name, self.root = sm_data.parse_spec(spec, root)
        if as_cifar and self.name != "fashion-mnist":
            raise UsageError(f"--as-cifar: only for fashion-mnist, got data {spec!r}")
        self.as_cifar = bool(as_cifar)
        self.class_names = list(sm_data.class_names(spec, root))
        self.num_classes = len(self.class_names)
        data_mean, data_std = sm_data.stats(self.name)
        self.mean = [float(v) for v in (mean if mean is not None else data_mean)]
        self.std = [float(v) for v in (std if std is not None else data_std)]
        self.workers = workers
        self.in_memory = self.name != "imagefolder"
        if self.in_memory:
            train_x, train_y = sm_data.load_uint8(self.name, True, self.root, as_cifar, download)
            test_x, test_y = sm_data.load_uint8(self.name, False, self.root, as_cifar, download)
            if limit_train is not None:
                train_x, train_y = train_x[:limit_train], train_y[:limit_train]
            if limit_test is not None:
                test_x, test_y = test_x[:limit_test], test_y[:limit_test]
            repeat = 3 if as_cifar else None
            padding = 4 if train_x.shape[-1] == 32 else 2
            self.train = ImageBank(train_x, self.mean, self.std, padding, True, repeat,
                                   _randaugment() if randaugment else None)
            self.test = ImageBank(test_x, self.mean, self.std, 0, False, repeat)
            self.train_labels, self.test_labels = train_y, test_y
            self.num_train, self.num_test = int(train_y.shape[0]), int(test_y.shape[0])
            self.shape = self.train.shape
        else:
            from torch.utils.data import Subset

            train_ds = sm_data.build_dataset(spec, True, root, randaugment=randaugment,
                                             image_size=image_size)
            test_ds = sm_data.build_dataset(spec, False, root, image_size=image_size)
            if limit_train is not None:
                train_ds = Subset(train_ds, range(min(limit_train, len(train_ds))))
            if limit_test is not None:
                test_ds = Subset(test_ds, range(min(limit_test, len(test_ds))))
            self.train, self.test = train_ds, test_ds
            self.num_train, self.num_test = len(train_ds), len(test_ds)
            self.shape = (3, image_size, image_size)
            stats_mean, stats_std = sm_data.stats("imagefolder")
            self.mean, self.std = list(stats_mean), list(stats_std)
        if self.num_train == 0:
            raise UsageError(f"--data: {spec!r} has no training images")

    @property
    def real_padding(self) -> int:
        return self.train.padding if self.in_memory else 0

    def stream(self, plan: EpochPlan, index_of, seed: int, epoch: int, rank: int,
               device: torch.device, memory_format: torch.memory_format):
        """(images, int labels) of this rank for every step of ``plan``."""
        if self.in_memory:
            return bank_stream(self.train, self.train_labels, plan, index_of,
                               make_generator(seed, "augment", "real", epoch), device,
                               memory_format)
        return dataset_stream(self.train, plan, index_of, self.workers,
                              make_generator(seed, "loader", epoch, rank), device, memory_format)

    def test_batches(self, info: DistInfo, memory_format: torch.memory_format,
                     batch_size: int = 500):
        """This rank's shard of the test split (images rank, rank + world, ...)."""
        if self.in_memory:
            index = torch.arange(info.rank, self.num_test, info.world)
            for chunk in index.split(batch_size):
                yield (self.test.batch(chunk, None, info.device, memory_format),
                       self.test_labels[chunk])
            return
        from torch.utils.data import DataLoader, Subset

        shard = Subset(self.test, range(info.rank, self.num_test, info.world))
        yield from DataLoader(shard, batch_size=min(batch_size, 256),
                              num_workers=max(0, self.workers))


def _randaugment():
    """torchvision RandAugment (2 ops, magnitude 9: the defaults of the paper's [5])."""
    from torchvision.transforms import v2

    return v2.RandAugment()


def mixed_bank(generated: "GeneratedSet", mean: Sequence[float], std: Sequence[float],
               real_padding: int, randaugment: bool = False) -> ImageBank:
    """The in-memory bank of a generated set: crop with half the real images' padding
    (the original code: 2 pixels for mixed CIFAR images against 4 for real ones) + flip."""
    return ImageBank(generated.images, mean, std, padding=max(real_padding // 2, 0), flip=True,
                     transform=_randaugment() if randaugment else None)


def check_generated(generated: "GeneratedSet", data: LabelledData, num_classes: int) -> None:
    """A generated set must come from the same data set, image shape and class count.

    Raises:
        UsageError: naming the mismatch.
    """
    made_from = generated.data_name
    if made_from and made_from != data.name:
        raise UsageError(f"--mixed: {generated.path} was generated from {made_from!r}, but the "
                         f"data is {data.name!r}")
    shape = tuple(int(v) for v in generated.images.shape[1:])
    if shape != tuple(data.shape):
        raise UsageError(f"--mixed: {generated.path} holds images of shape {list(shape)}, but "
                         f"the model takes {list(data.shape)}"
                         + (" (Fashion-MNIST as 3x32x32 needs --as-cifar, or a teacher "
                            "trained with it)" if shape[0] == 3 and data.name == "fashion-mnist"
                            else ""))
    if generated.num_classes != num_classes:
        raise UsageError(f"--mixed: {generated.path} has labels over {generated.num_classes} "
                         f"classes, the model predicts {num_classes}")


def generated_notes(generated: "GeneratedSet", num_train: int,
                    teacher_path: str | os.PathLike | None = None) -> list[str]:
    """Warnings about a generated set that is usable but maybe not what was meant: drawn from
    more training images than this run labels (``--limit-train``), or made by another teacher."""
    notes = []
    data = generated.manifest.get("data") or {}
    drawn_from = data.get("size")
    if data.get("split", "train") == "train" and drawn_from and int(drawn_from) > num_train:
        notes.append(f"note: {generated.path} was mixed from {drawn_from} training images, this "
                     f"run labels only {num_train}: the mixed images show images beyond "
                     f"--limit-train")
    sha = (generated.manifest.get("teacher") or {}).get("sha256")
    if teacher_path is not None and sha:
        from .checkpoint import sha256_file

        if sha256_file(teacher_path) != sha:
            notes.append(f"note: {generated.path} was made with another teacher "
                         f"({(generated.manifest.get('teacher') or {}).get('path')})")
    return notes


# ----------------------------------------------------------------------------------------------
# Generated sets


# ----------------------------------------------------------------------------------------------
# Set-up

# Arguments that may differ between a run and its --resume (they do not change the result).
RUNTIME_ARGS = ("resume", "out", "device", "threads", "workers", "no_progress", "limit_test",
                "eval_every", "stop_after", "command_line", "func", "command")


def run_arguments(args: argparse.Namespace) -> dict:
    """The arguments as plain values, for the checkpoint and the log."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")
            and not callable(v)}


def must_match(run_args: dict) -> list[str]:
    """Keys of ``run_args`` a resumed run must share with its checkpoint."""
    return [k for k in run_args if k not in RUNTIME_ARGS]


def check_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run: ``out`` holding a checkpoint needs ``--resume``."""
    if (out / CHECKPOINT_NAME).exists() and not resume:
        raise UsageError(f"--out: {out} already holds {CHECKPOINT_NAME}; pass --resume to "
                         f"continue it or choose another --out")


def prepare_model(model: nn.Module, info: DistInfo, channels_last: bool
                  ) -> tuple[nn.Module, nn.Module]:
    """Move to the device (channels_last), and under torchrun convert BatchNorm to
    SyncBatchNorm and wrap in DistributedDataParallel. Returns (model, module to call)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(info.device, memory_format=memory_format)
    if not info.distributed:
        return model, model
    from torch.nn.parallel import DistributedDataParallel

    model = convert_sync_batchnorm(model, info.device)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def make_sgd(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (as the original code)."""
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.wd)


# ----------------------------------------------------------------------------------------------
# The loop


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


def write_log(state: TrainState, end: dict | None = None) -> None:
    """Rewrite ``log.jsonl`` from the start record and the history (atomic, rank 0 only)."""
    if not state.info.is_main:
        return
    lines = [dict(event="start", **state.start_record)]
    resumes = sorted(state.resumes, key=lambda r: r["after_epoch"])
    for record in state.history:
        lines += [dict(event="resume", **r) for r in resumes
                  if r["after_epoch"] == record["epoch"] - 1]
        lines.append(dict(event="epoch", **record))
    done = state.history[-1]["epoch"] if state.history else 0
    lines += [dict(event="resume", **r) for r in resumes if r["after_epoch"] >= done]
    if end is not None:
        lines.append(dict(event="end", **end))
    atomic_write_text("".join(json.dumps(line) + "\n" for line in lines), state.out / LOG_NAME)


def try_resume(state: TrainState, must_match: Sequence[str]) -> bool:
    """Load ``<out>/checkpoint.pt`` into ``state`` if it exists; returns whether it did.

    Raises:
        UsageError: the checkpoint was made with different ``must_match`` arguments.
    """
    path = state.out / CHECKPOINT_NAME
    if not path.exists():
        if state.info.is_main:
            print(f"--resume: no {path} yet, starting from scratch", flush=True)
        return False
    ckpt = load_checkpoint(path, map_location="cpu")
    saved = ckpt.get("args", {})
    for key in must_match:
        if saved.get(key) != state.run_args.get(key):
            raise UsageError(f"--{key.replace('_', '-')}: the checkpoint in {state.out} was made "
                             f"with {saved.get(key)!r}, got {state.run_args.get(key)!r}")
    try:
        state.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise MissingFileError(f"--resume: {path} does not fit this model: "
                               f"{str(e).splitlines()[0]}") from e
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.start_epoch = int(ckpt["epoch"])
    state.history = list(ckpt.get("history", []))
    state.elapsed = float(ckpt.get("elapsed_s", 0.0))
    state.start_record = dict(ckpt.get("start_record") or state.start_record)
    state.resumes = list(ckpt.get("resumes", [])) + [
        {"after_epoch": state.start_epoch,
         "command_line": state.run_args.get("command_line")}]
    if state.info.is_main:
        print(f"resuming {path} after epoch {state.start_epoch}", flush=True)
    return True


# step(batch) -> (loss, parts, n, correct, labelled): the loss to minimise, named scalar parts
# (unweighted means over the batch, for the log), the number of images in the batch, and how
# many of its ``labelled`` real images the model classified right (top-1); tensors or numbers.
StepFn = Callable[[Any], tuple[torch.Tensor, dict, Any, Any, Any]]


def fit(state: TrainState, batches: Callable[[int], Iterator[Any]], step: StepFn,
        test_batches: Callable[[], Iterable], extra_eval: Callable[[], dict] | None = None
        ) -> list[dict]:
    """Run epochs ``state.start_epoch .. state.epochs - 1``; returns the history.

    Each epoch: reseed the per-rank streams (seed, epoch, rank), set the lr, run
    ``step(batch)`` for each batch of ``batches(epoch)`` with backward and an SGD step, sum the
    metrics over ranks, evaluate every ``eval_every`` epochs and after the last, then (rank 0)
    write ``checkpoint.pt`` atomically and rewrite ``log.jsonl``.
    """
    info = state.info
    seed = int(state.run_args.get("seed", 0))
    memory_format = (torch.channels_last if state.run_args.get("channels_last")
                     else torch.contiguous_format)
    last = state.epochs
    if state.stop_after is not None:
        last = min(last, state.start_epoch + state.stop_after)
    for epoch in range(state.start_epoch, last):
        t0 = time.perf_counter()
        seed_everything(seed, "global", epoch, info.rank)
        lr = step_lr(state.lr, epoch, state.decay_epochs, state.decay_rate)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.module.train()
        names: list[str] = []
        sums = None
        bar = progress(state.steps_per_epoch, f"{state.name} {epoch + 1}/{state.epochs}",
                       state.show_progress and info.is_main)
        for i, batch in enumerate(batches(epoch)):
            with autocast(info.device, state.amp):
                loss, parts, n, correct, labelled = step(batch)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            if sums is None:
                names = ["loss", *parts]
                sums = torch.zeros(len(names) + 3, dtype=torch.float64, device=info.device)
            values = torch.stack([loss.detach().double(), *(torch.as_tensor(p).detach().double()
                                                            .to(info.device)
                                                            for p in parts.values())])
            sums[:len(names)] += values * float(n)
            sums[len(names)] += torch.as_tensor(correct, device=info.device).double()
            sums[len(names) + 1] += float(labelled)
            sums[len(names) + 2] += float(n)
            bar.update(1)
            if info.is_main and state.show_progress and i % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        bar.close()
        if sums is None:
            raise UsageError("no training batches: the epoch is shorter than one batch")
        all_reduce_sum(sums, info)
        seen = max(float(sums[-1]), 1.0)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr,
                                  "steps": (epoch + 1) * state.steps_per_epoch}
        for j, name in enumerate(names):
            record[name if name == "loss" else f"loss_{name}"] = float(sums[j]) / seen
        record["train_top1"] = float(sums[len(names)]) / max(float(sums[len(names) + 1]), 1.0)
        record["train_images"] = int(sums[-1])
        if not math.isfinite(record["loss"]):
            raise RuntimeError(f"the loss became {record['loss']} in epoch {epoch + 1}; lower "
                               f"--lr")
        train_s = time.perf_counter() - t0
        if (epoch + 1) % state.eval_every == 0 or epoch + 1 == state.epochs:
            result = evaluate(state.model, test_batches(), info.device, info, state.amp,
                              memory_format)
            record.update(test_top1=result["top1"], test_top5=result["top5"],
                          test_loss=result["loss"], test_images=result["images"])
            if extra_eval is not None:
                record.update(extra_eval())
        state.elapsed += time.perf_counter() - t0
        record.update(train_s=round(train_s, 3), epoch_s=round(time.perf_counter() - t0, 3),
                      elapsed_s=round(state.elapsed, 3))
        state.history.append(record)
        if info.is_main:
            test = (f" | test top1 {record['test_top1']:.4f} top5 {record['test_top5']:.4f}"
                    if "test_top1" in record else "")
            print(f"{state.name} epoch {epoch + 1}/{state.epochs}: lr {lr:.4g} loss "
                  f"{record['loss']:.4f} train top1 {record['train_top1']:.4f}{test} | "
                  f"{record['epoch_s']:.1f}s", flush=True)
            save_checkpoint(state.out / CHECKPOINT_NAME, state.model, state.config,
                            optimizer=state.optimizer.state_dict(), epoch=epoch + 1,
                            history=state.history, elapsed_s=state.elapsed, args=state.run_args,
                            start_record=state.start_record, resumes=state.resumes)
            write_log(state)
    info.barrier()
    return state.history


def finish(state: TrainState, extra: dict | None = None) -> dict:
    """Write ``model.pt`` (final weights, config with the final test accuracy) and the log's
    ``end`` record; returns that record."""
    if not state.history:
        raise UsageError(f"--epochs: the checkpoint in {state.out} already has "
                         f"{state.start_epoch} epochs of {state.epochs}; nothing to do")
    final = state.history[-1]
    if final["epoch"] < state.epochs:
        if state.info.is_main:
            print(f"stopped after epoch {final['epoch']} of {state.epochs} (--stop-after); "
                  f"continue with --resume", flush=True)
        return {"epochs": final["epoch"], "stopped": True, "test_top1": final.get("test_top1"),
                "test_top5": final.get("test_top5")}
    end = {"epochs": final["epoch"], "test_top1": final.get("test_top1"),
           "test_top5": final.get("test_top5"), "elapsed_s": round(state.elapsed, 3),
           **(extra or {})}
    if state.info.is_main:
        config = dict(state.config, test_accuracy=final.get("test_top1"))
        save_checkpoint(state.out / MODEL_NAME, state.model, config)
        write_log(state, end)
    return end
