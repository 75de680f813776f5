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
import errno
import fcntl
import hashlib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "resolve_device",
    "set_threads",
    "LOCK_NAME",
    "OutputBusyError",
    "OutputLock",
    "lock_output",
    "lock_output_for",
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
        raise UsageError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device: {str(name)!r} asked, but torch sees no CUDA device")
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
    # Output locks this process holds (see lock_output_for); shutdown_distributed releases them.
    locks: list = field(default_factory=list)

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
    """Release the output locks ``info`` holds and leave the process group that
    :func:`init_distributed` joined (if it did)."""
    while info.locks:
        info.locks.pop().release()
    if info.initialised_here:
        import torch.distributed as dist

        if dist.is_initialized():
            # A rank that tears gloo down while its peer still talks to it can abort the process
            # ("terminate called without an active exception"): meet first, unless failing.
            if sys.exc_info()[0] is None:
                dist.barrier()
            dist.destroy_process_group()


LOCK_NAME = ".supermix.lock"


class OutputBusyError(UsageError):
    """Another process is writing to the same output folder."""


class OutputLock:
    """An exclusive ``fcntl.flock`` on ``<folder>/.supermix.lock``, which holds the holder's pid.

    The kernel drops the lock when its holder exits, however it exits (``kill -9`` too), so a
    lock file left by a killed run is taken over by the next one (``stale_pid``: the pid it
    named). :meth:`release` removes the file while still holding the lock; a process that
    opened the file before that notices (another inode under the name) and opens it again.
    """

    def __init__(self, path: Path, fd: int, stale_pid: int | None):
        self.path, self.fd, self.stale_pid = path, fd, stale_pid

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def lock_output(folder: str | os.PathLike, setting: str = "out") -> OutputLock:
    """Take the exclusive lock of an output folder (created if missing), without waiting.

    Raises:
        OutputBusyError: another process holds it (its pid is named).
        UsageError: the folder cannot be created or written.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = None
                for _ in range(20):  # the holder writes its pid just after taking the lock
                    holder = _read_pid(fd)
                    if holder is not None:
                        break
                    time.sleep(0.01)
                os.close(fd)
                raise OutputBusyError(
                    f"{setting}: {folder} is in use by another supermix process "
                    f"(pid {holder if holder is not None else 'unknown'}, lock file {path}); "
                    f"wait for it to finish or write to another folder") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (and removed) between our open and our lock: again
                os.close(fd)
                continue
            stale = _read_pid(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return OutputLock(path, fd, stale if stale != os.getpid() else None)
        raise OutputBusyError(f"{setting}: could not take the lock {path}")
    except OSError as e:
        raise UsageError(f"{setting}: cannot lock {folder}: {e.strerror or e}") from e


def lock_output_for(info: DistInfo, folder: str | os.PathLike, setting: str = "out"
                    ) -> OutputLock | None:
    """Lock ``folder`` for this job until :func:`shutdown_distributed`: in one process, that
    process; under torchrun, rank 0 alone (the rank that writes the shared files: manifest,
    checkpoint, log; the other ranks write only under its lock), and every rank raises when
    the folder is busy. Returns the lock on the rank that holds it.

    Raises:
        OutputBusyError: another process holds the lock (its pid is named).
    """
    lock, error = None, None
    if info.is_main:
        try:
            lock = lock_output(folder, setting)
            info.locks.append(lock)
        except UsageError as e:
            if not info.distributed:
                raise
            error = str(e)
    if info.distributed:
        error = info.gather(error)[0]
        if error is not None:
            raise OutputBusyError(error)
    return lock


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
