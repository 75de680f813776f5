"""``supermix generate``: write a mixed data set to disk, deterministically and resumably.

The settings, the shard loop and the resume rules are :mod:`supermix.generation`'s; the files
are :mod:`supermix.mixed_set`'s. Under ``torchrun`` each rank writes its own shards and rank 0
the manifest.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from . import args as sargs
from ..generation import (DEFAULTS, MIXER_NAMES, SOLVER_PRESETS, SPLIT_NAMES, STORE_NAMES,
                          GenerateSettings, generate_set)
from ..kernels import BACKENDS
from ..runtime import set_threads

__all__ = ["add_parser", "run"]


def limit_arg(text: str) -> int | str:
    """argparse type of ``--limit``: a positive integer N (the first N images) or the path of
    an index file."""
    if text.strip().isdigit():
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected N >= 1 or an index file, got {text!r}")
        return value
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"expected a number N or an index file, got {text!r} "
                                         f"(no such file)")
    return text


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``generate`` to an argparse subparsers object; sets ``func=run``."""
    p = subparsers.add_parser(
        "generate", help="write a SuperMix (or MixUp/CutMix) data set as safetensors shards",
        description=__doc__.split("\n\n")[0])
    sargs.add_teacher_argument(p)
    sargs.add_data_arguments(p, root_help="folder overriding the spec's")
    p.add_argument("--split", choices=SPLIT_NAMES, default=None, help="default train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, required=True, help="N, samples in the finished set")
    # dest "preset": the name manifests have always recorded.
    p.add_argument("--solver-preset", "--preset", dest="preset", choices=sorted(SOLVER_PRESETS),
                   default=None,
                   help="paper settings: cifar100 (8x8, sigma 1), imagenet (16x16, sigma 2, k 3), "
                        "fashion-mnist; explicit flags override it")
    d = DEFAULTS  # the solver's are SolverConfig's defaults
    sargs.add_solver_arguments(p, defaults=d, scope="solver: ")
    p.add_argument("--mixer", choices=MIXER_NAMES, default=None, help=f"default {d['mixer']}")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per solver call (default 128)")
    p.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 1024)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--store", choices=STORE_NAMES, default=None,
                   help="dtype of 'mixed' (default uint8)")
    p.add_argument("--keep-failed", action="store_true", default=None,
                   help="keep samples that did not reach the criterion (default: drop them)")
    p.add_argument("--export-png", action="store_true", help="also write each image as a PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a set generated with other settings in --out")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="kernel backend (default: SUPERMIX_BACKEND, else auto)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    sargs.add_threads_argument(p, "; on a busy machine 1 can be many times faster")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--limit", type=limit_arg, default=None, metavar="N|FILE",
                   help="mix only the first N images of the split, or the ones an index file "
                        "lists (whitespace-separated)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``supermix generate`` from parsed arguments; prints a one-line summary."""
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "command")
                 and not callable(v) and not (k == "limit" and v is None)}
    set_threads(args.threads)
    settings = GenerateSettings(**{f.name: getattr(args, f.name) for f in fields(GenerateSettings)})
    manifest = generate_set(settings, arguments)
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
