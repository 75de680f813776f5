"""``supermix demo``: SuperMix, MixUp and CutMix side by side, offline, in seconds.

With no arguments: the shipped ResNet-20 teacher, one batch of Fashion-MNIST test images, k=2.
Each mixer mixes the same batch; the command prints, per mixer, the mean solver iterations, the
success rate (the paper's termination criterion evaluated on the teacher's prediction: are the
top-u classes exactly the sources' u classes?) and images per second, with the kernel backend
used, and writes a PNG grid (per row: the sources, their masks, the mixed image, the teacher's
top-k classes with probabilities).
"""
from __future__ import annotations

import argparse

import torch

from . import args as sargs
from ..errors import UsageError
from ..kernels import BACKENDS
from ..viz import run_demo

__all__ = ["run_demo", "add_parser", "run"]



def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo", help="mix Fashion-MNIST test images with SuperMix, MixUp and CutMix; write a PNG",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="supermix_demo.png", help="PNG to write")
    sargs.add_teacher_argument(p)
    p.add_argument("--batch-size", type=int, default=64, help="images mixed by each mixer")
    p.add_argument("--rows", type=int, default=3, help="rows per mixer in the figure")
    sargs.add_solver_arguments(p, ("k", "max_iters"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="kernel backend (default: SUPERMIX_BACKEND, else auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op CPU threads (0: torch's choice). The demo's batches are "
                        "small: on a shared machine more threads than free cores make the "
                        "teacher many times slower, and one thread is never far from the best")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = sargs.solver_config({"k": args.k, "max_iters": args.max_iters})
    if args.threads < 0:
        raise UsageError(f"--threads: expected an integer >= 0, got {args.threads}")
    if args.threads > 0 and torch.device(args.device or "cpu").type == "cpu":
        torch.set_num_threads(args.threads)
    run_demo(out=args.out, teacher=args.teacher, batch_size=args.batch_size, rows=args.rows,
             k=config.k, seed=args.seed, max_iters=config.max_iters, device=args.device,
             backend=args.backend)
    return 0
