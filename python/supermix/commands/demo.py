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
import time

import torch

from .. import args as sargs
from .. import data as sdata
from ..config import SolverConfig
from ..errors import UsageError
from ..generation.settings import DEFAULTS as GENERATE_DEFAULTS
from ..kernels import BACKENDS
from ..mixers import MIXERS, mixer_names
from ..teachers import load_teacher_for, locate_teacher

__all__ = ["run_demo", "add_parser", "run"]

DEMO_DATA = "fashion-mnist"
MIXER_TITLES = {key: MIXERS[key].name for key in mixer_names()}


def run_demo(out: str = "supermix_demo.png", teacher: str | None = None, batch_size: int = 64,
             rows: int = 3, k: int = SolverConfig.k, seed: int = 0,
             max_iters: int = SolverConfig.max_iters,
             device: str | None = None, backend: str | None = None,
             mixers: tuple[str, ...] = mixer_names(),
             print_fn=print) -> dict:
    """Mix one batch with each mixer, print the figures and write the grid; returns the figures.

    Returns:
        ``{"backend": str, "device": str, "out": path, "mixers": {name: {"mean_iters",
        "success_rate", "images_per_s", "seconds"}}}``.
    """
    from ..kernels import backend_info, resolve_backend

    from ..generation import blind_success, make_mixer
    from ..runtime import resolve_device
    from ..viz import render_rows, rows_from_result

    if batch_size < k:
        raise UsageError(f"--batch-size: expected >= k={k}, got {batch_size}")
    if rows < 1 or rows > batch_size:
        raise UsageError(f"--rows: expected 1..{batch_size}, got {rows}")
    dev = resolve_device(device)
    teacher_path = locate_teacher(teacher)
    model, as_cifar, mean, std = load_teacher_for(teacher_path, DEMO_DATA, None, dev)
    try:
        used_backend = resolve_backend(dev, backend)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--backend: {e}") from e

    pixels_all, _ = sdata.load_tensors(DEMO_DATA, train=False, as_cifar=as_cifar, normalize=False)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(pixels_all.shape[0], generator=generator)[:batch_size]
    pixels = pixels_all[index]
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = ((pixels - mean_t) / std_t).to(dev)

    def to_pixels(t: torch.Tensor) -> torch.Tensor:
        return (t.float().cpu() * std_t + mean_t).clamp(0, 1)

    names = sdata.class_names(DEMO_DATA)
    with torch.no_grad():  # warm-up: one-time kernel and allocator set-up is not the mixers' cost
        model(x)
    # generate's defaults (the paper's CIFAR settings, the default solver), with the demo's k.
    settings = dict(GENERATE_DEFAULTS, k=k, max_iters=max_iters)
    figures: dict[str, dict] = {}
    results = {}
    for name in mixers:
        mixer = make_mixer(dict(settings, mixer=name), model, backend)
        gen = torch.Generator(device=dev).manual_seed(seed)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        result = mixer.mix_batch(x, gen)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        success = result.success if MIXERS[name].solves else blind_success(result, k)
        figures[name] = {
            "mean_iters": float(result.iters.float().mean()),
            "success_rate": float(success.float().mean()),
            "images_per_s": batch_size / seconds,
            "seconds": seconds,
        }
        results[name] = result
    # Every mixer drew the same source sets (same seed, same order of draws), so the rows show
    # the same sets for each: the first ones SuperMix solved, then unsolved ones if too few.
    order = torch.arange(batch_size)
    solved = [name for name in results if MIXERS[name].solves]
    if solved:
        ok = results[solved[0]].success.cpu()
        order = torch.cat([order[ok], order[~ok]])
    picked = order[:rows].tolist()
    grid_rows = []
    for name, result in results.items():
        grid_rows += rows_from_result(MIXER_TITLES[name], result, pixels, names, picked,
                                      to_pixels=to_pixels)
    path = render_rows(grid_rows, out, title=f"SuperMix vs MixUp vs CutMix, k={k}, teacher "
                                             f"{model.supermix_config.get('arch', '?')} on "
                                             f"Fashion-MNIST test images (same source sets "
                                             f"per mixer)")
    info = backend_info()
    print_fn(f"supermix demo: teacher {teacher_path.name} "
             f"({model.supermix_config.get('arch', '?')}), {batch_size} Fashion-MNIST test "
             f"images, k={k}, max_iters={max_iters}, device {dev}"
             + (f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
                if dev.type == "cpu" else "")
             + f", backend {used_backend}"
             + (f" ({info['library']})" if used_backend == "cpp" and info.get("library") else ""))
    print_fn(f"{'mixer':<10}{'mean iters':>12}{'success':>10}{'images/s':>11}")
    for name, f in figures.items():
        print_fn(f"{MIXER_TITLES[name]:<10}{f['mean_iters']:>12.2f}{f['success_rate']:>10.1%}"
                 f"{f['images_per_s']:>11.1f}")
    print_fn("success: the teacher's top-u classes are the sources' u classes (paper sec. 3)")
    print_fn(f"wrote {path}")
    return {"backend": used_backend, "device": str(dev), "out": str(path), "mixers": figures}


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
