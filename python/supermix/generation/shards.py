"""Mixing one shard: its seed, its quota, the mixer, and the loop that draws batches until the
quota of samples that meet the termination criterion is reached."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from ..errors import UsageError
from ..mixed_set import ShardStats, to_stored
from ..mixers import mixer_solves
from ..runtime import derive_seed
from .source import ImageSource

__all__ = [
    "MAX_DRAW_FACTOR",
    "GenerationError",
    "shard_quotas",
    "shard_seed",
    "make_mixer",
    "check_finite",
    "blind_success",
    "generate_shard",
]

# A shard that drops failures stops after drawing this many times its quota of images.
MAX_DRAW_FACTOR = 20


class GenerationError(UsageError):
    """Generation cannot finish with these settings (e.g. too few samples reach the criterion)."""


def shard_quotas(size: int, shard_size: int) -> list[int]:
    """Samples per shard: ``shard_size`` each, the last one the remainder."""
    count = math.ceil(size / shard_size)
    return [min(shard_size, size - j * shard_size) for j in range(count)]


def shard_seed(seed: int, j: int, stream: str) -> int:
    """Seed of shard j's ``stream`` generator ("index": which images are drawn, "mix": how they
    are mixed): a hash of (seed, j, stream), so that the two streams of a shard, and the streams
    of different seeds and shards, are unrelated. (Both streams once had the seed
    ``seed * 1000003 + j``: the same random numbers chose the images and their partners and
    weights.)"""
    if stream not in ("index", "mix"):
        raise ValueError(f"stream: expected 'index' or 'mix', got {stream!r}")
    return derive_seed(seed, "shard", int(j), stream)


def make_mixer(s: dict, teacher: nn.Module, backend: str | None):
    """The mixer the settings ``s`` name, labelled by ``teacher``.

    Raises:
        UsageError: the mixer refuses a setting (its message).
    """
    from ..config import COMMAND_LINE_SETTINGS, SolverConfig
    from ..mixers import create_mixer
    try:
        # The blind mixers take k and alpha from the config and ignore the rest.
        config = SolverConfig(backend=backend).replace(
            **{name: s[name] for name in COMMAND_LINE_SETTINGS})
        return create_mixer(s["mixer"], teacher=teacher, config=config)
    except (ValueError, TypeError) as e:
        raise UsageError(f"mixer: {s['mixer']}: {e}") from e


def check_finite(j: int, tensors: dict[str, torch.Tensor]) -> None:
    """Nothing non-finite is written: every float field of shard j must be finite.

    Raises:
        GenerationError: naming the field.
    """
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise GenerationError(f"shard {j}: {name} holds NaN or inf values (a teacher or "
                                  f"solver gone non-finite); nothing was written for it")


def blind_success(result, k: int) -> torch.Tensor:
    """The termination criterion on the teacher's prediction, for the blind mixers: does the
    teacher see all source classes? [B] bool."""
    from ..solver import is_success
    labels = result.labels[result.sources]
    present = torch.zeros_like(result.probs, dtype=torch.bool).scatter_(1, labels, True)
    return is_success(result.probs, present, present.sum(dim=1), k)


def generate_shard(j: int, quota: int, s: dict, source: ImageSource, mixer, device,
                   progress: Callable[[int, ShardStats], None]) -> tuple[dict, ShardStats]:
    """Mix batches until shard j holds ``quota`` samples; returns its tensors and statistics."""
    index_gen = torch.Generator().manual_seed(shard_seed(s["seed"], j, "index"))
    mix_gen = torch.Generator(device=device).manual_seed(shard_seed(s["seed"], j, "mix"))
    blind = not mixer_solves(s["mixer"])
    keep_all = s["keep_failed"] or blind
    n_data = len(source)
    stats = ShardStats()
    parts: dict[str, list[torch.Tensor]] = {}
    kept = 0
    start = time.perf_counter()
    while kept < quota:
        remaining = quota - kept
        if not keep_all and stats.generated >= MAX_DRAW_FACTOR * quota:
            rate = stats.successes / max(stats.generated, 1)
            raise GenerationError(
                f"shard {j}: only {kept} of {quota} samples reached the termination criterion "
                f"after mixing {stats.generated} images (success rate {rate:.1%}, guard: "
                f"{MAX_DRAW_FACTOR}x the quota); raise --max-iters, or keep the failures with "
                f"--keep-failed")
        want = remaining if keep_all else remaining + remaining // 4 + 1
        b = min(max(s["k"], min(s["batch_size"], want)), n_data)
        index = torch.randperm(n_data, generator=index_gen)[:b]
        x = source.batch(index)
        result = mixer.mix_batch(x, mix_gen)
        success = blind_success(result, s["k"]) if blind else result.success
        success = success.cpu()
        iters = result.iters.cpu()
        stats.generated += b
        stats.batches += 1
        stats.successes += int(success.sum())
        stats.iters_sum += int(iters.sum())
        keep = torch.ones(b, dtype=torch.bool) if keep_all else success.clone()
        stats.failed_dropped += int((~keep).sum())
        rows = keep.nonzero().flatten()
        stats.surplus_dropped += max(0, rows.numel() - remaining)
        rows = rows[:remaining]
        if rows.numel() == 0:
            continue
        rows_dev = rows.to(result.mixed.device)
        fields = {
            "mixed": to_stored(source.to_pixels(result.mixed[rows_dev]).cpu(), s["store"]),
            "sources": source.split_index(index[result.sources.cpu()[rows]]).to(torch.int64),
            "r": result.weights[rows_dev].float().cpu(),
            "y_hat": result.targets[rows_dev].float().cpu(),
            "teacher_probs": result.probs[rows_dev].float().cpu(),
            "iters": iters[rows].to(torch.int64),
            "success": success[rows].to(torch.bool),
        }
        if result.mask_logits is not None:
            fields["mask_logits"] = result.mask_logits[rows_dev].float().cpu()
        for name, value in fields.items():
            parts.setdefault(name, []).append(value)
        kept += rows.numel()
        stats.seconds = time.perf_counter() - start
        progress(rows.numel(), stats)
    stats.seconds = time.perf_counter() - start
    tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
    return tensors, stats
