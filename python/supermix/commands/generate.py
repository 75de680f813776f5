"""``supermix generate``: write a mixed data set to disk, deterministically and resumably.

The set of N samples is cut into shards of ``shard_size`` samples. Shard j is a pure function of
(settings, seed, j): a CPU ``torch.Generator`` seeded with ``seed * 1_000_003 + j`` draws the
source images of each batch (a random permutation of the data set, first ``b`` indices, so no
image appears twice in one batch), and a generator on the mixing device seeded with the same
number drives the mixer (source sets, Dirichlet weights, CutMix boxes). A shard mixes batches
until it holds its quota; unless ``keep_failed``, samples whose masks did not reach the
termination criterion are dropped and more batches are drawn, up to a guard of
``MAX_DRAW_FACTOR`` times the quota, after which the run stops with an error that says what to
change. So the finished set has exactly N samples, and a rerun with the same settings writes
byte-identical shards (on the same device, CPU thread count and kernel backend: these change
the float reductions, hence iteration counts and images, slightly; they are runtime choices,
recorded in the manifest but not compared on resume).

Files in the output folder (DESIGN.md, "Files and formats"):

``shard-00000.safetensors`` ...
    ``mixed``          [n,C,H,W] uint8 (de-normalised to pixel space and rounded) or float16
                       in [0, 1] (``store="float16"``), pixel space either way;
    ``sources``        [n,k] int64 indices into the data set split;
    ``r``              [n,k] float32 mixing weights (eq. 2; CutMix: the covered fractions);
    ``y_hat``          [n,classes] float32 target soft label sum_i r_i onehot(y_i), with y_i the
                       teacher's label of source i;
    ``teacher_probs``  [n,classes] float32 teacher softmax on the (float) mixed image;
    ``mask_logits``    [n,k,h,w] float32 (SuperMix only; absent for the blind mixers);
    ``iters``          [n] int64 solver iterations; ``success`` [n] bool.
    The safetensors header metadata holds the shard number, its counts and the settings, and no
    timing, so that a shard's bytes (and its sha256) depend on nothing but the settings.
``manifest.json``
    settings (every argument, the preset and its values), seed, data spec and size, teacher path
    and sha256, the shard list (file, count, sha256, statistics) and the totals: generated,
    kept, failed dropped, success rate, mean iterations, images per second.
``png/00000000.png`` ...
    with ``export_png``: every kept mixed image, named by its global sample number.

Every file is written to a temporary file in the same folder and ``os.replace``d into place, so a
process killed at any moment (``kill -9``) leaves finished files or none. A rerun with the same
command verifies the finished shards (sha256 against the manifest; a shard missing from the
manifest because the run died between the two writes is accepted from its header), deletes the
temporary files and generates only the missing shards. A manifest or shard written with other
settings is an error naming the differing keys, unless ``overwrite``.

The blind mixers (MixUp, CutMix) are labelled by the teacher, as the paper does for its
baselines. Their ``success`` is the same termination criterion evaluated on the teacher's
prediction (does the teacher see all source classes?), recorded for comparison; their samples are
never dropped, since dropping them would make them a teacher-filtered variant of the method.

Under ``torchrun`` (RANK and WORLD_SIZE set) rank r generates the shards j with
j % world_size == r; after a barrier (gloo on CPU, nccl on CUDA) rank 0 writes the manifest.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import data as sdata
from .checkpoint import sha256_file
from .mixed_set import (FORMAT, FORMAT_VERSION, MANIFEST, PNG_DIR, ShardStats, check_out_dir,
                        clean_temporaries, describe_diff, differing_keys, finished_shards,
                        read_manifest, remove_set, shard_name, to_stored, totals, write_manifest,
                        write_pngs, write_shard)
from .errors import MissingFileError, UsageError
from .teachers import check_teacher_runs, describe_teacher, load_teacher_for, locate_teacher
from .runtime import DistInfo, init_distributed, resolve_device, shutdown_distributed
from .runtime import progress as run_progress

__all__ = [
    "PRESETS",
    "DEFAULTS",
    "MAX_DRAW_FACTOR",
    "GenerationError",
    "generate",
    "resolve_settings",
    "shard_quotas",
    "shard_seed",
    "add_parser",
    "run",
]

# A shard that drops failures stops after drawing this many times its quota of images.
MAX_DRAW_FACTOR = 20

# The paper's settings (sec. 4): alpha 3, lambda_s 25; CIFAR-100 8x8 masks, sigma 1; ImageNet
# 16x16, sigma 2. Fashion-MNIST (28x28) uses the CIFAR values. k is 2, and 3 for ImageNet.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar100": {"k": 2, "alpha": 3.0, "lambda_s": 25.0, "sigma": 1.0, "mask_size": 8},
    "imagenet": {"k": 3, "alpha": 3.0, "lambda_s": 25.0, "sigma": 2.0, "mask_size": 16},
    "fashion-mnist": {"k": 2, "alpha": 3.0, "lambda_s": 25.0, "sigma": 1.0, "mask_size": 8},
}

# Values used when neither a flag nor a preset sets a setting.
DEFAULTS: dict[str, Any] = {
    "k": 2, "alpha": 3.0, "lambda_s": 25.0, "sigma": 1.0, "mask_size": 8,
    "method": "newton_sp", "mixer": "supermix", "max_iters": 50, "batch_size": 128,
    "shard_size": 1024, "seed": 0, "store": "uint8", "split": "train", "keep_failed": False,
}

MIXER_NAMES = ("supermix", "mixup", "cutmix")
METHOD_NAMES = ("newton_sp", "newton", "sgd")
STORE_NAMES = ("uint8", "float16")
SPLIT_NAMES = ("train", "test")

# The settings that decide the content of the shards: a rerun must match them all. Runtime
# choices (device, backend, PNG export, progress bar) are recorded in the manifest, not compared.
IDENTITY_KEYS = (
    "format", "teacher_sha256", "data", "split", "dataset_size", "image_shape", "mean", "std",
    "num_classes", "size", "shard_size", "batch_size", "seed", "mixer", "k", "alpha",
    "lambda_s", "sigma", "mask_size", "method", "max_iters", "keep_failed", "store",
)

class GenerationError(UsageError):
    """Generation cannot finish with these settings (e.g. too few samples reach the criterion)."""


def shard_quotas(size: int, shard_size: int) -> list[int]:
    """Samples per shard: ``shard_size`` each, the last one the remainder."""
    count = math.ceil(size / shard_size)
    return [min(shard_size, size - j * shard_size) for j in range(count)]


def shard_seed(seed: int, j: int) -> int:
    """Seed of shard j's generators: a pure function of (seed, j)."""
    return (int(seed) * 1_000_003 + int(j)) % (2 ** 63)


# ---------------------------------------------------------------------------------- settings --
def resolve_settings(preset: str | None = None, **explicit: Any) -> tuple[dict, dict]:
    """Merge explicit values over a preset over :data:`DEFAULTS`.

    Returns ``(settings, preset_values)``; an explicit ``None`` means "not given".

    Raises:
        UsageError: unknown preset.
    """
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    preset_values = dict(PRESETS[preset]) if preset else {}
    settings = dict(DEFAULTS)
    settings.update(preset_values)
    settings.update({k: v for k, v in explicit.items() if v is not None})
    return settings, preset_values


def _check_settings(s: dict) -> None:
    def need(cond: bool, name: str, expected: str) -> None:
        if not cond:
            raise UsageError(f"--{name.replace('_', '-')}: expected {expected}, got {s[name]!r}")

    need(isinstance(s["size"], int) and s["size"] > 0, "size", "an integer > 0")
    need(isinstance(s["k"], int) and s["k"] >= 2, "k", "an integer >= 2")
    need(math.isfinite(s["alpha"]) and s["alpha"] > 0, "alpha", "a number > 0")
    need(math.isfinite(s["lambda_s"]) and s["lambda_s"] >= 0, "lambda_s", "a number >= 0")
    need(math.isfinite(s["sigma"]) and s["sigma"] >= 0, "sigma", "a number >= 0")
    need(isinstance(s["mask_size"], int) and s["mask_size"] >= 1, "mask_size", "an integer >= 1")
    need(isinstance(s["max_iters"], int) and s["max_iters"] >= 0, "max_iters", "an integer >= 0")
    need(isinstance(s["batch_size"], int) and s["batch_size"] >= 1, "batch_size", "an integer >= 1")
    need(isinstance(s["shard_size"], int) and s["shard_size"] >= 1, "shard_size", "an integer >= 1")
    need(isinstance(s["seed"], int) and s["seed"] >= 0, "seed", "an integer >= 0")
    need(s["mixer"] in MIXER_NAMES, "mixer", f"one of {list(MIXER_NAMES)}")
    need(s["method"] in METHOD_NAMES, "method", f"one of {list(METHOD_NAMES)}")
    need(s["store"] in STORE_NAMES, "store", f"one of {list(STORE_NAMES)}")
    need(s["split"] in SPLIT_NAMES, "split", f"one of {list(SPLIT_NAMES)}")


# -------------------------------------------------------------------------------------- data --
class _ImageSource:
    """The data split as normalised float batches on a device, fetched by index."""

    def __init__(self, spec: str, root: str | None, train: bool, as_cifar: bool,
                 mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.name, self.root = sdata.parse_spec(spec, root)
        self.device = device
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.images: torch.Tensor | None = None
        self.dataset = None
        self.repeat = 0
        if self.name == "imagefolder":
            from torchvision.transforms import v2
            tf = sdata.eval_transform(self.name)
            # The eval transform normalises; keep pixel space here and normalise below.
            tf = v2.Compose([t for t in tf.transforms if not isinstance(t, v2.Normalize)])
            self.dataset = sdata.build_dataset(spec, train=train, root=root, transform=tf)
            first = self.dataset[0][0]
            self.shape = tuple(first.shape)
        else:
            self.images, _ = sdata.load_uint8(spec, train=train, root=root, as_cifar=as_cifar)
            self.shape = tuple(self.images.shape[1:])
            if as_cifar and self.shape[0] == 1:
                self.repeat = 3
                self.shape = (3,) + self.shape[1:]

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else self.images.shape[0]

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Images [b,C,H,W] float32 in [0, 1] on the CPU."""
        if self.dataset is not None:
            return torch.stack([self.dataset[int(i)][0] for i in index]).float()
        x = self.images[index].float().div_(255)
        if self.repeat:
            x = x.expand(-1, self.repeat, -1, -1)
        return x.contiguous()

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised images [b,C,H,W] float32 on the device."""
        x = self.pixels(index).to(self.device)
        return (x - self.mean.to(self.device)) / self.std.to(self.device)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation of :meth:`batch`, clamped to [0, 1]."""
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------ mixing --
def _make_mixer(s: dict, teacher: nn.Module, backend: str | None):
    from .mixers import create_mixer
    if s["mixer"] == "supermix":
        return create_mixer("supermix", teacher=teacher, k=s["k"], alpha=s["alpha"],
                            lambda_s=s["lambda_s"], sigma=s["sigma"], mask_size=s["mask_size"],
                            max_iters=s["max_iters"], method=s["method"], backend=backend)
    return create_mixer(s["mixer"], teacher=teacher, k=s["k"], alpha=s["alpha"])


def _criterion(result, k: int) -> torch.Tensor:
    """The termination criterion on the teacher's prediction (for the blind mixers)."""
    from .solver import is_success
    labels = result.labels[result.sources]
    present = torch.zeros_like(result.probs, dtype=torch.bool).scatter_(1, labels, True)
    return is_success(result.probs, present, present.sum(dim=1), k)


def _generate_shard(j: int, quota: int, s: dict, source: _ImageSource, mixer, device,
                    progress: Callable[[int, ShardStats], None]) -> tuple[dict, ShardStats]:
    """Mix batches until shard j holds ``quota`` samples; returns its tensors and statistics."""
    seed = shard_seed(s["seed"], j)
    index_gen = torch.Generator().manual_seed(seed)
    mix_gen = torch.Generator(device=device).manual_seed(seed)
    blind = s["mixer"] != "supermix"
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
        success = _criterion(result, s["k"]) if blind else result.success
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
            "sources": index[result.sources.cpu()[rows]].to(torch.int64),
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


def generate(out_dir: str | os.PathLike, size: int, *, teacher: str | os.PathLike | None = None,
             data: str = "fashion-mnist", data_root: str | None = None,
             preset: str | None = None, k: int | None = None, alpha: float | None = None,
             lambda_s: float | None = None, sigma: float | None = None,
             mask_size: int | None = None, method: str | None = None, mixer: str | None = None,
             max_iters: int | None = None, batch_size: int | None = None,
             shard_size: int | None = None, seed: int | None = None, store: str | None = None,
             split: str | None = None, keep_failed: bool | None = None,
             export_png: bool = False, overwrite: bool = False, backend: str | None = None,
             device: str | torch.device | None = None, progress: bool | None = None,
             arguments: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Generate (or finish generating) a mixed data set in ``out_dir``; returns the manifest.

    Args:
        out_dir: output folder (created).
        size: N, the number of samples of the finished set.
        teacher: checkpoint path; None is the shipped Fashion-MNIST ResNet-20.
        data, data_root: data spec (see :mod:`supermix.data`) and optional folder override.
        preset: ``"cifar100" | "imagenet" | "fashion-mnist"``: the paper's k, alpha,
            lambda_s, sigma and mask size; explicit arguments override it.
        k, alpha, lambda_s, sigma, mask_size, method, max_iters: solver settings.
        mixer: ``"supermix" | "mixup" | "cutmix"``; the blind ones are labelled by the teacher.
        batch_size: images mixed per solver call; shard_size: samples per shard file.
        seed: the run's seed; shard j is a function of (seed, j) and the settings.
        store: ``"uint8" | "float16"`` for ``mixed``.
        split: ``"train" | "test"`` split of the data.
        keep_failed: keep SuperMix samples that did not reach the criterion (default: drop).
        export_png: also write every kept mixed image as a PNG.
        overwrite: replace a set generated with other settings instead of failing.
        backend, device: kernel backend and device of the teacher and the mixing.
        progress: show a tqdm bar (None: when stderr is a terminal).
        arguments: the command-line arguments, recorded in the manifest.
        log: where one-line notices go (default: stderr).

    Raises:
        UsageError: bad arguments, a teacher that does not fit the data, an unwritable folder,
            or a folder generated with other settings (the differing keys are named).
        GenerationError: a shard could not reach its quota of successful samples.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if arguments is None:  # a library call: record its keyword arguments
        arguments = {
            "out": os.fspath(out_dir), "size": size,
            "teacher": os.fspath(teacher) if teacher is not None else None, "data": data,
            "data_root": data_root, "preset": preset, "k": k, "alpha": alpha,
            "lambda_s": lambda_s, "sigma": sigma, "mask_size": mask_size, "method": method,
            "mixer": mixer, "max_iters": max_iters, "batch_size": batch_size,
            "shard_size": shard_size, "seed": seed, "store": store, "split": split,
            "keep_failed": keep_failed, "export_png": export_png, "overwrite": overwrite,
            "backend": backend, "device": str(device) if device is not None else None,
        }
    s, preset_values = resolve_settings(
        preset, k=k, alpha=alpha, lambda_s=lambda_s, sigma=sigma, mask_size=mask_size,
        method=method, mixer=mixer, max_iters=max_iters, batch_size=batch_size,
        shard_size=shard_size, seed=seed, store=store, split=split, keep_failed=keep_failed)
    s["size"] = size
    _check_settings(s)
    dev = resolve_device(device)
    out = Path(out_dir)
    teacher_path = locate_teacher(teacher)
    try:
        teacher_sha = sha256_file(teacher_path)
    except OSError as e:
        raise MissingFileError(f"--teacher: cannot read {teacher_path}: {e.strerror or e}") from e

    # Ranks wait for each other at the end of a generation that may take hours.
    world = init_distributed(dev, timeout=datetime.timedelta(days=7))
    try:
        return _generate(out, s, preset, preset_values, teacher_path, teacher_sha, data,
                         data_root, world.device, backend, export_png, overwrite, progress,
                         arguments, world, log)
    finally:
        shutdown_distributed(world)


def _generate(out: Path, s: dict, preset, preset_values, teacher_path: Path, teacher_sha: str,
              data: str, data_root, dev, backend, export_png, overwrite, progress, arguments,
              world: DistInfo, log) -> dict:
    from supermix_ext import resolve_backend

    name, root = sdata.parse_spec(data, data_root)
    teacher_model, as_cifar, mean, std = load_teacher_for(teacher_path, data, data_root, dev)
    try:
        resolved_backend = resolve_backend(dev, backend)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--backend: {e}") from e
    source = _ImageSource(data, data_root, s["split"] == "train", as_cifar, mean, std, dev)
    if len(source) < s["k"]:
        raise UsageError(f"--data: {data!r} has {len(source)} images, fewer than k={s['k']}")
    num_classes = int(teacher_model.supermix_config["num_classes"])
    check_teacher_runs(teacher_model, source.batch(torch.arange(min(2, len(source)))),
                       num_classes, teacher_path)

    check_out_dir(out)
    data_spec = name if root is None else f"{name}:{os.path.abspath(root)}"
    identity = {
        "format": f"{FORMAT}/{FORMAT_VERSION}", "teacher_sha256": teacher_sha, "data": data_spec,
        "split": s["split"], "dataset_size": len(source), "image_shape": list(source.shape),
        "mean": mean, "std": std, "num_classes": num_classes,
        **{key: s[key] for key in IDENTITY_KEYS if key in s},
    }
    identity = {key: identity[key] for key in IDENTITY_KEYS}
    quotas = shard_quotas(s["size"], s["shard_size"])
    mine = [j for j in range(len(quotas)) if j % world.world == world.rank]
    overwrite_hint = "pass --overwrite to replace it, or choose another --out"

    manifest = read_manifest(out)
    if manifest is not None and not overwrite:
        old = manifest.get("config", {})
        keys = differing_keys(old, identity)
        if keys:
            raise UsageError(f"--out: {out / MANIFEST} was written with other settings: "
                             f"{describe_diff(old, identity, keys)}; {overwrite_hint}")
    if overwrite:
        manifest = None
    if world.rank == 0:
        if overwrite:
            remove_set(out)
        removed = clean_temporaries(out)
        if removed:
            log(f"supermix generate: removed {removed} partial temporary file(s) in {out}")
    world.barrier()

    done, warnings = finished_shards(out, manifest, identity, quotas, mine, overwrite_hint)
    for w in warnings:
        log(f"supermix generate: {w}")

    header = {
        "format": FORMAT, "version": FORMAT_VERSION, "complete": False,
        "config": identity,
        "arguments": dict(arguments or {}),
        "preset": preset, "preset_values": preset_values,
        "seed": s["seed"],
        "data": {"spec": data_spec, "given": data, "split": s["split"], "size": len(source),
                 "image_shape": list(source.shape), "mean": mean, "std": std,
                 "as_cifar": as_cifar, "class_names": list(sdata.class_names(data, data_root))},
        "teacher": describe_teacher(teacher_path, teacher_model, teacher_sha),
        "runtime": {"device": str(dev), "backend": resolved_backend, "world_size": world.world,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "export_png": bool(export_png)},
        "shard_count": len(quotas),
    }

    previous_speed = ((manifest or {}).get("totals") or {}).get("images_per_s")

    def update_manifest(entries: dict[int, dict], complete: bool, seconds: float, kept: int) -> dict:
        ordered = [entries[j] for j in sorted(entries)]
        m = dict(header, complete=complete, shards=ordered,
                 totals=totals(ordered, s["size"], seconds, kept, previous_speed),
                 updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(out, m)
        return m

    # Single process: the manifest follows every finished shard. Under torchrun only rank 0
    # writes it, at the start and the end; a killed run is resumed from the shard headers.
    entries = dict(done)
    known: dict[int, dict] = {}
    for part in world.gather(done):
        known.update(part)
    if world.rank == 0:
        update_manifest(known, False, 0.0, 0)

    if export_png:  # a set finished without --export-png gets its PNGs now
        for j in done:
            first = j * s["shard_size"]
            names = [out / PNG_DIR / f"{first + i:08d}.png" for i in range(quotas[j])]
            if not all(p.is_file() for p in names):
                from safetensors.torch import load_file
                write_pngs(out, first, load_file(out / shard_name(j))["mixed"])
    todo = [j for j in mine if j not in done]
    mixer = _make_mixer(s, teacher_model, backend)
    total = sum(quotas[j] for j in mine)
    bar = run_progress(total, "generate", progress if world.is_main else False,
                       initial=sum(quotas[j] for j in done), unit="img")
    running = {"generated": 0, "successes": 0, "iters": 0}
    run_kept = 0
    start = time.perf_counter()
    try:
        for j in todo:
            base = dict(running)

            def on_batch(n_kept: int, st: ShardStats, base=base) -> None:
                running.update(generated=base["generated"] + st.generated,
                               successes=base["successes"] + st.successes,
                               iters=base["iters"] + st.iters_sum)
                if bar is not None:
                    g = max(running["generated"], 1)
                    bar.set_postfix(success=f"{running['successes'] / g:.1%}",
                                    iters=f"{running['iters'] / g:.2f}", refresh=False)
                    bar.update(n_kept)

            tensors, stats = _generate_shard(j, quotas[j], s, source, mixer, dev, on_batch)
            count = tensors["mixed"].shape[0]
            if export_png:
                write_pngs(out, j * s["shard_size"], tensors["mixed"])
            entries[j] = write_shard(out, j, tensors, stats, identity)
            run_kept += count
            if world.world == 1:
                update_manifest(entries, False, time.perf_counter() - start, run_kept)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    gathered = world.gather({"entries": entries, "kept": run_kept, "seconds": seconds})
    result: dict = {}
    if world.rank == 0:
        all_entries: dict[int, dict] = {}
        for part in gathered:
            all_entries.update(part["entries"])
        missing = [j for j in range(len(quotas)) if j not in all_entries]
        if missing:
            raise GenerationError(f"shards {missing} were not generated")
        result = update_manifest(all_entries, True, max(p["seconds"] for p in gathered),
                                sum(p["kept"] for p in gathered))
    world.barrier()
    if world.rank != 0:
        result = read_manifest(out) or {}
    return result


# ------------------------------------------------------------------------------------- CLI ----
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``generate`` to an argparse subparsers object; sets ``func=run``."""
    p = subparsers.add_parser(
        "generate", help="write a SuperMix (or MixUp/CutMix) data set as safetensors shards",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint (default: the shipped Fashion-MNIST ResNet-20)")
    p.add_argument("--data", default="fashion-mnist",
                   help="data spec: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, imagefolder:DIR")
    p.add_argument("--data-root", default=None, help="folder overriding the spec's")
    p.add_argument("--split", default=None, help="train (default) or test")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, required=True, help="N, samples in the finished set")
    p.add_argument("--preset", default=None,
                   help="paper settings: cifar100 (8x8, sigma 1), imagenet (16x16, sigma 2, k 3), "
                        "fashion-mnist; explicit flags override it")
    p.add_argument("--k", type=int, default=None, help="sources per sample (default 2)")
    p.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha (default 3)")
    p.add_argument("--lambda-s", type=float, default=None, help="sparsity weight (default 25)")
    p.add_argument("--sigma", type=float, default=None, help="smoothing sigma (default 1)")
    p.add_argument("--mask-size", type=int, default=None, help="mask grid side (default 8)")
    p.add_argument("--method", default=None, help="newton_sp (default), newton or sgd")
    p.add_argument("--mixer", default=None, help="supermix (default), mixup or cutmix")
    p.add_argument("--max-iters", type=int, default=None, help="solver iteration cap (default 50)")
    p.add_argument("--batch-size", type=int, default=None, help="images per solver call (default 128)")
    p.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 1024)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--store", default=None, help="uint8 (default) or float16 for 'mixed'")
    p.add_argument("--keep-failed", action="store_true", default=None,
                   help="keep samples that did not reach the criterion (default: drop them)")
    p.add_argument("--export-png", action="store_true", help="also write each image as a PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a set generated with other settings in --out")
    p.add_argument("--backend", default=None, help="kernel backend: auto, cpp, triton, reference")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice; on a busy machine "
                        "1 can be many times faster)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``supermix generate`` from parsed arguments; prints a one-line summary."""
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "command")
                 and not callable(v)}
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    manifest = generate(
        args.out, args.size, teacher=args.teacher, data=args.data, data_root=args.data_root,
        preset=args.preset, k=args.k, alpha=args.alpha, lambda_s=args.lambda_s, sigma=args.sigma,
        mask_size=args.mask_size, method=args.method, mixer=args.mixer, max_iters=args.max_iters,
        batch_size=args.batch_size, shard_size=args.shard_size, seed=args.seed, store=args.store,
        split=args.split, keep_failed=args.keep_failed, export_png=args.export_png,
        overwrite=args.overwrite, backend=args.backend, device=args.device,
        progress=args.progress, arguments=arguments)
    if manifest and int(os.environ.get("RANK", "0")) == 0:
        t = manifest["totals"]
        rate = f"{t['success_rate']:.1%}" if t["success_rate"] is not None else "n/a"
        iters = f"{t['mean_iters']:.2f}" if t["mean_iters"] is not None else "n/a"
        speed = (f"{t['this_run']['images_per_s']:.1f} images/s"
                 if t["this_run"]["images_per_s"] else "nothing left to generate")
        print(f"supermix generate: {t['kept']} samples in {args.out} ({len(manifest['shards'])} "
              f"shards); generated {t['generated']}, failed dropped {t['failed_dropped']}, "
              f"success rate {rate}, mean iterations {iters}; this run: {t['this_run']['kept']} "
              f"samples, {speed}; backend {manifest['runtime']['backend']} on "
              f"{manifest['runtime']['device']}")
    return 0
