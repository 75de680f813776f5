"""Generating a mixed set: :func:`generate` with keywords, :func:`generate_set` with a
:class:`~supermix.generation.settings.GenerateSettings`; shards are written and resumed through
:mod:`supermix.mixed_set`, ranks of a torchrun job share the shards."""
from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import data as sdata
from ..checkpoint import sha256_file
from ..config import COMMAND_LINE_SETTINGS, SOLVER_FIELDS, SolverConfig
from ..errors import MissingFileError, UsageError
from ..kernels import deterministic_mode
from ..mixed_set import (FORMAT, FORMAT_VERSION, MANIFEST, PNG_DIR, ShardStats, check_out_dir,
                         clean_temporaries, describe_diff, differing_keys, finished_shards,
                         read_manifest, remove_set, shard_name, totals, write_manifest,
                         write_pngs, write_shard)
from ..runtime import (DistInfo, init_distributed, lock_output_for, progress, resolve_device,
                       shutdown_distributed)
from ..teachers import (check_teacher_runs, describe_teacher, load_teacher_for, locate_teacher,
                        teacher_image_size)
from .settings import IDENTITY_KEYS, GenerateSettings, check_image_fit
from .shards import GenerationError, check_finite, generate_shard, make_mixer, shard_quotas
from .source import ImageSource, subset_indices

__all__ = ["generate", "generate_set"]

_DEFAULT = SolverConfig()


def generate(out_dir: str | os.PathLike, size: int, *, config: SolverConfig | None = None,
             arguments: dict | None = None, log: Callable[[str], None] | None = None,
             **options: Any) -> dict:
    """Generate (or finish generating) a mixed data set in ``out_dir``; returns the manifest.

    Args (``options`` are the fields of :class:`GenerateSettings`):
        out_dir: output folder (created).
        size: N, the number of samples of the finished set.
        teacher: checkpoint path; None is the shipped Fashion-MNIST ResNet-20.
        data, data_root: data spec (see :mod:`supermix.data`) and optional folder override.
        preset: ``"cifar100" | "imagenet" | "fashion-mnist"``: the paper's k, alpha,
            lambda_s, sigma and mask size; explicit arguments override it.
        config: a :class:`~supermix.SolverConfig` for the solver settings below (square
            grids; its backend and teacher options are the run's own); the keywords then
            must not repeat them.
        k, alpha, lambda_s, sigma, mask_size, method, max_iters: solver settings.
        min_iters: solver steps every SuperMix sample takes before the criterion may stop it
            (default 0: a sample the teacher already reads correctly at the initial, uniform
            masks is kept as a plain average of its sources).
        mixer: ``"supermix" | "mixup" | "cutmix"``; the blind ones are labelled by the teacher.
        batch_size: images mixed per solver call; shard_size: samples per shard file.
        seed: the run's seed; shard j is a function of (seed, j) and the settings.
        store: ``"uint8" | "float16"`` for ``mixed``.
        split: ``"train" | "test"`` split of the data.
        limit: mix only the first N images of the split (an int) or the ones an index file
            lists (a path).
        keep_failed: keep SuperMix samples that did not reach the criterion (default: drop).
        export_png: also write every kept mixed image as a PNG.
        overwrite: replace a set generated with other settings instead of failing.
        backend, device: kernel backend and device of the teacher and the mixing.
        progress: show a tqdm bar (None: when stderr is a terminal).
        arguments: the command-line arguments, recorded in the manifest (default: these).
        log: where one-line notices go (default: stderr).

    Raises:
        UsageError: bad arguments, a teacher that does not fit the data, an unwritable folder,
            or a folder generated with other settings (the differing keys are named).
        GenerationError: a shard could not reach its quota of successful samples.
    """
    if config is not None:
        options.update(_config_options(config, options))
    return generate_set(GenerateSettings(out=out_dir, size=size, **options), arguments, log)


def _config_options(config: SolverConfig, options: dict) -> dict:
    """The keyword settings of a SolverConfig (as generate records them: a square grid as one
    int).

    Raises:
        UsageError: a setting given twice, or a grid that is not square.
    """
    twice = sorted(set(COMMAND_LINE_SETTINGS) & {k for k, v in options.items() if v is not None})
    if twice:
        raise UsageError(f"generate: {twice} given both in config and as keywords")
    # The manifest records the command-line settings only: any other changed setting would
    # make sets that their manifest does not describe.
    unrecorded = [name for name in SOLVER_FIELDS if name not in COMMAND_LINE_SETTINGS
                  and name != "backend" and getattr(config, name) != getattr(_DEFAULT, name)]
    if unrecorded:
        raise UsageError(f"generate: config sets {unrecorded}, which generate does not take "
                         f"(it takes {list(COMMAND_LINE_SETTINGS)} and backend)")
    h, w = config.mask_size
    if h != w:
        raise UsageError(f"generate: config.mask_size must be square, got {h}x{w}")
    values = {name: getattr(config, name) for name in COMMAND_LINE_SETTINGS}
    values["mask_size"] = h
    if config.backend is not None and options.get("backend") is None:
        values["backend"] = config.backend
    return values


def generate_set(settings: GenerateSettings, arguments: dict | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Generate (or finish generating) the set ``settings`` describe; returns the manifest.
    ``arguments``: what the manifest records as the arguments (default: the settings')."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if arguments is None:
        arguments = settings.arguments()
    s, preset_values = settings.solver_settings()
    dev = resolve_device(settings.device)
    teacher_path = locate_teacher(settings.teacher)
    try:
        teacher_sha = sha256_file(teacher_path)
    except OSError as e:
        raise MissingFileError(f"teacher: cannot read {teacher_path}: {e.strerror or e}") from e

    # Ranks wait for each other at the end of a generation that may take hours.
    world = init_distributed(dev, timeout=datetime.timedelta(days=7))
    try:
        return _generate(settings, s, preset_values, teacher_path, teacher_sha, arguments,
                         world, log)
    finally:
        shutdown_distributed(world)


@dataclass
class _Inputs:
    """What a generation reads before it writes: the teacher, the images, the mixer."""

    teacher: torch.nn.Module
    as_cifar: bool
    mean: list
    std: list
    num_classes: int
    source: ImageSource
    subset_sha: str | None
    mixer: object
    backend: str


def _load_inputs(settings: GenerateSettings, s: dict, teacher_path: Path,
                 dev: torch.device) -> _Inputs:
    """The teacher, images and mixer of a generation, every setting checked against them
    before the first byte is written (a refused run leaves --out as it found it)."""
    from ..kernels import resolve_backend

    data, data_root = settings.data, settings.data_root
    sdata.parse_spec(data, data_root)
    teacher, as_cifar, mean, std = load_teacher_for(teacher_path, data, data_root, dev)
    try:
        backend = resolve_backend(dev, settings.backend)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"backend: {e}") from e
    source = ImageSource(data, data_root, s["split"] == "train", as_cifar, mean, std, dev,
                         image_size=teacher_image_size(teacher.supermix_config))
    source.subset, subset_sha = subset_indices(settings.limit, source.split_size)
    if len(source) < s["k"]:
        raise UsageError(f"data: {data!r} has {len(source)} images, fewer than k={s['k']}")
    num_classes = int(teacher.supermix_config["num_classes"])
    check_teacher_runs(teacher, source.batch(torch.arange(min(2, len(source)))), num_classes,
                       teacher_path)
    # The mask against the images, then the mixer's own checks.
    check_image_fit(s, source.shape)
    mixer = make_mixer(s, teacher, settings.backend)
    return _Inputs(teacher, as_cifar, mean, std, num_classes, source, subset_sha, mixer, backend)


def _identity(s: dict, inputs: _Inputs, data_spec: str, teacher_sha: str) -> dict:
    """The settings that decide the shards' content (IDENTITY_KEYS, in that order; "subset"
    after them for a set mixed from an index file)."""
    source = inputs.source
    identity = {
        "format": f"{FORMAT}/{FORMAT_VERSION}", "teacher_sha256": teacher_sha, "data": data_spec,
        "split": s["split"], "dataset_size": len(source), "image_shape": list(source.shape),
        "mean": inputs.mean, "std": inputs.std, "num_classes": inputs.num_classes,
        **{key: s[key] for key in IDENTITY_KEYS if key in s},
    }
    identity = {key: identity[key] for key in IDENTITY_KEYS}
    if inputs.subset_sha is not None:
        identity["subset"] = inputs.subset_sha
    return identity


_OVERWRITE_HINT = "pass --overwrite to replace it, or choose another --out"


def _reconcile(out: Path, identity: dict, quotas: list[int], mine: list[int], overwrite: bool,
               world: DistInfo, log) -> tuple[dict | None, dict[int, dict]]:
    """What a rerun keeps of ``out``: ``(manifest, done)``, the manifest written before (None:
    none, or ``overwrite``) and this rank's finished, valid shards as manifest entries.
    Rank 0 removes the old set (``overwrite``) and the temporaries of a killed run.

    Raises:
        UsageError: the folder holds a set generated with other settings (naming them).
    """
    manifest = read_manifest(out)
    if manifest is not None and not overwrite:
        old = manifest.get("config", {})
        keys = differing_keys(old, identity)
        if keys:
            raise UsageError(f"out: {out / MANIFEST} was written with other settings: "
                             f"{describe_diff(old, identity, keys)}; {_OVERWRITE_HINT}")
    if overwrite:
        manifest = None
    if world.rank == 0:
        if overwrite:
            remove_set(out)
        removed = clean_temporaries(out)
        if removed:
            log(f"supermix generate: removed {removed} partial temporary file(s) in {out}")
    world.barrier()
    done, warnings = finished_shards(out, manifest, identity, quotas, mine, _OVERWRITE_HINT)
    for w in warnings:
        log(f"supermix generate: {w}")
    return manifest, done


def _manifest_header(settings: GenerateSettings, s: dict, preset_values: dict, inputs: _Inputs,
                     identity: dict, data_spec: str, arguments: dict, teacher_path: Path,
                     teacher_sha: str, world: DistInfo, shard_count: int) -> dict:
    """Everything the manifest says besides its shards and totals."""
    data, data_root, source = settings.data, settings.data_root, inputs.source
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "complete": False,
        "config": identity,
        "arguments": dict(arguments or {}),
        "preset": settings.preset, "preset_values": preset_values,
        "seed": s["seed"],
        "data": {"spec": data_spec, "given": data, "split": s["split"], "size": len(source),
                 "image_shape": list(source.shape), "mean": inputs.mean, "std": inputs.std,
                 "as_cifar": inputs.as_cifar,
                 "class_names": list(sdata.class_names(data, data_root)),
                 **({"limit": settings.limit} if settings.limit is not None else {})},
        "teacher": describe_teacher(teacher_path, inputs.teacher, teacher_sha),
        "runtime": {"device": str(world.device), "backend": inputs.backend,
                    "world_size": world.world, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "export_png": bool(settings.export_png)},
        "shard_count": shard_count,
    }


class _ManifestWriter:
    """Writes the manifest: the header, the finished shards in order, their totals."""

    def __init__(self, out: Path, header: dict, size: int, previous_speed: float | None):
        self.out, self.header, self.size, self.previous_speed = out, header, size, previous_speed

    def write(self, entries: dict[int, dict], complete: bool, seconds: float, kept: int) -> dict:
        ordered = [entries[j] for j in sorted(entries)]
        m = dict(self.header, complete=complete, shards=ordered,
                 totals=totals(ordered, self.size, seconds, kept, self.previous_speed),
                 updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(self.out, m)
        return m


def _export_missing_pngs(out: Path, done: dict[int, dict], quotas: list[int],
                         shard_size: int) -> None:
    """A set finished without --export-png gets its PNGs now."""
    for j in done:
        first = j * shard_size
        names = [out / PNG_DIR / f"{first + i:08d}.png" for i in range(quotas[j])]
        if not all(p.is_file() for p in names):
            from safetensors.torch import load_file
            write_pngs(out, first, load_file(out / shard_name(j))["mixed"])


def _write_shards(out: Path, todo: list[int], quotas: list[int], s: dict, inputs: _Inputs,
                  identity: dict, entries: dict[int, dict], bar, export_png: bool,
                  world: DistInfo, manifest: _ManifestWriter) -> tuple[int, float]:
    """Mix and write the shards ``todo`` into ``entries``; returns (kept, seconds). A single
    process rewrites the manifest after every shard."""
    running = {"generated": 0, "successes": 0, "iters": 0}
    run_kept = 0
    start = time.perf_counter()
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

        try:
            # Deterministic kernels (no float atomics on a GPU), so a set is the same bytes
            # whenever it is generated or resumed.
            with deterministic_mode():
                tensors, stats = generate_shard(j, quotas[j], s, inputs.source, inputs.mixer,
                                                world.device, on_batch)
        except FloatingPointError as e:  # a NaN/inf teacher or solver state: nothing written
            raise GenerationError(f"shard {j}: {e}") from e
        check_finite(j, tensors)
        count = tensors["mixed"].shape[0]
        if export_png:
            write_pngs(out, j * s["shard_size"], tensors["mixed"])
        entries[j] = write_shard(out, j, tensors, stats, identity)
        run_kept += count
        if world.world == 1:
            manifest.write(entries, False, time.perf_counter() - start, run_kept)
    return run_kept, time.perf_counter() - start


def _generate(settings: GenerateSettings, s: dict, preset_values: dict, teacher_path: Path,
              teacher_sha: str, arguments: dict, world: DistInfo, log) -> dict:
    out = Path(settings.out)
    inputs = _load_inputs(settings, s, teacher_path, world.device)
    check_out_dir(out)
    # One writer per folder: a second generate on this --out stops here, naming our pid.
    lock = lock_output_for(world, out)
    if lock is not None and lock.stale_pid is not None:
        log(f"supermix generate: took over the lock of pid {lock.stale_pid}, which has exited")
    data_spec = sdata.resolved_spec(settings.data, settings.data_root)  # same files, same spec
    identity = _identity(s, inputs, data_spec, teacher_sha)
    quotas = shard_quotas(s["size"], s["shard_size"])
    mine = [j for j in range(len(quotas)) if j % world.world == world.rank]
    old, done = _reconcile(out, identity, quotas, mine, settings.overwrite, world, log)
    header = _manifest_header(settings, s, preset_values, inputs, identity, data_spec,
                              arguments, teacher_path, teacher_sha, world, len(quotas))
    manifest = _ManifestWriter(out, header, s["size"],
                               ((old or {}).get("totals") or {}).get("images_per_s"))

    # Single process: the manifest follows every finished shard. Under torchrun only rank 0
    # writes it, at the start and the end; a killed run is resumed from the shard headers.
    entries = dict(done)
    known: dict[int, dict] = {}
    for part in world.gather(done):
        known.update(part)
    if world.rank == 0:
        manifest.write(known, False, 0.0, 0)
    if settings.export_png:
        _export_missing_pngs(out, done, quotas, s["shard_size"])
    bar = progress(sum(quotas[j] for j in mine), "generate",
                   settings.progress if world.is_main else False,
                   initial=sum(quotas[j] for j in done), unit="img")
    try:
        run_kept, seconds = _write_shards(out, [j for j in mine if j not in done], quotas, s,
                                          inputs, identity, entries, bar, settings.export_png,
                                          world, manifest)
    finally:
        if bar is not None:
            bar.close()

    gathered = world.gather({"entries": entries, "kept": run_kept, "seconds": seconds})
    result: dict = {}
    if world.rank == 0:
        all_entries: dict[int, dict] = {}
        for part in gathered:
            all_entries.update(part["entries"])
        missing = [j for j in range(len(quotas)) if j not in all_entries]
        if missing:
            raise GenerationError(f"shards {missing} were not generated")
        result = manifest.write(all_entries, True, max(p["seconds"] for p in gathered),
                                sum(p["kept"] for p in gathered))
    world.barrier()
    if world.rank != 0:
        result = read_manifest(out) or {}
    return result
