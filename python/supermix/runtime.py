"""What every command sets up before it does its work: device, threads, seeds, the torchrun
process group and the progress bar.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) :func:`init_distributed` joins the
process group, NCCL on GPUs and gloo on CPUs, and returns this process's :class:`DistInfo`;
without torchrun it returns a world of one whose collectives are no-ops, so a command calls
them unconditionally. Seeds are derived from (seed, parts) by :func:`derive_seed`, so a random
stream is a pure function of the run's seed and its place (epoch, rank, shard).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "resolve_device",
    "set_threads",
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_sum",
    "derive_seed",
    "make_generator",
    "seed_everything",
    "autocast",
    "memory_format",
    "progress",
]


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``auto`` (or None) | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device; ``cuda`` means
    cuda:local_rank.

    Raises:
        UsageError: an unknown name, or CUDA asked for where torch sees none.
    """
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {str(name)!r} asked, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def set_threads(threads: int | None) -> None:
    """torch's intra-op CPU threads (None or 0: leave torch's choice)."""
    if threads:
        torch.set_num_threads(threads)


@dataclass
class DistInfo:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_distributed(device_name: str | torch.device | None = "auto",
                     timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the torchrun process group if WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs); on a
    GPU each rank takes cuda:LOCAL_RANK. ``timeout``: how long collectives wait (torch's
    default when None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        extra = {} if timeout is None else {"timeout": timeout}
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, **extra)
        else:
            dist.init_process_group("gloo", **extra)
        here = True
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                    device=device, initialised_here=here)


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group that :func:`init_distributed` joined (if it did)."""
    if info.initialised_here:
        import torch.distributed as dist

        if dist.is_initialized():
            # A rank that tears gloo down while its peer still talks to it can abort the process
            # ("terminate called without an active exception"): meet first, unless failing.
            if sys.exc_info()[0] is None:
                dist.barrier()
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in one process); returns it."""
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that is a pure function of (seed, parts), stable across runs and machines."""
    digest = hashlib.blake2b(repr((int(seed),) + parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(seed: int, *parts: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` (seed, parts)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *parts))
    return g


def seed_everything(seed: int, *parts: Any) -> None:
    """Seed torch (CPU and CUDA), NumPy and ``random`` from (seed, parts)."""
    s = derive_seed(seed, *parts)
    torch.manual_seed(s)
    np.random.seed(s % (2 ** 32))
    random.seed(s)


def autocast(device: torch.device, amp: str):
    """bf16 autocast on ``device`` when ``amp == "bf16"``, else a null context."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``, for models and batches."""
    return torch.channels_last if channels_last else torch.contiguous_format


def progress(total: int, desc: str, enabled: bool | None, initial: int = 0, unit: str = "it"):
    """A tqdm bar on stderr. ``enabled=None``: only when stderr is a terminal. When stderr is
    not a terminal (a log file) the bar is redrawn at most every 30 s."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    disable = (not interactive) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                dynamic_ncols=True, mininterval=0.5 if interactive else 30.0, leave=interactive)
