"""Batches that are the same global batches in one process and in N: in-memory banks with
batched crop and flip, the epoch plan that orders the slots, and the rank-aware streams."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..runtime import make_generator

__all__ = ["CropFlip", "crop_flip", "ImageBank", "EpochPlan", "bank_stream", "dataset_stream"]


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

    images: [B,C,H,W] any dtype; returns the same shape and dtype (a new tensor). The draws
    come from :meth:`CropFlip.draw`, made for a whole global batch so that every rank takes its
    part of the same draws.
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
            raise UsageError(f"batch_size: the global batch must divide over {world} "
                             f"processes, got {global_batch}")
        if num_slots < global_batch:
            raise UsageError(f"batch_size: {global_batch} is larger than the {num_slots} "
                             f"samples of an epoch")
        self.global_batch, self.world, self.rank = global_batch, world, rank
        self.order = torch.randperm(num_slots, generator=make_generator(seed, "order", epoch))
        self.steps = num_slots // global_batch
        if limit_steps is not None:
            self.steps = min(self.steps, limit_steps)

    @staticmethod
    def checked_steps(num_slots: int, global_batch: int, world: int,
                      limit_steps: int | None = None) -> int:
        """:meth:`steps_for`, refusing a global batch that does not divide over ``world``
        processes or is larger than an epoch.

        Raises:
            UsageError: naming ``--batch-size``.
        """
        if global_batch % world:
            raise UsageError(f"batch_size: the global batch {global_batch} must divide over "
                             f"{world} processes")
        steps = EpochPlan.steps_for(num_slots, global_batch, limit_steps)
        if steps == 0:
            raise UsageError(f"batch_size: {global_batch} is larger than the {num_slots} "
                             f"samples of an epoch")
        return steps

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


