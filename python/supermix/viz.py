"""Figures of mixed samples: per row the k sources, their masks, the mixed image and the
teacher's top classes.

Drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing
here touches pyplot's global backend or needs a display. Images are given in pixel space,
float [C,H,W] in [0, 1] (or uint8); masks are full-resolution [H,W] in [0, 1].
"""
from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import SolverConfig

__all__ = ["MixRow", "render_rows", "topk_lines", "to_numpy_image", "rows_from_result",
           "run_demo", "draw_mixed_set", "DEMO_DATA"]

# The demo's images: the Fashion-MNIST test split, which the shipped teacher was trained for.
DEMO_DATA = "fashion-mnist"


@dataclass
class MixRow:
    """One row of a figure.

    Attributes:
        group: row title (e.g. the mixer's name); shown left of the row.
        mixed: [C,H,W] mixed image in pixel space.
        sources: the k source images, or None when they are not available.
        masks: the k normalised masks [H,W], or None (blind mixers without masks).
        lines: text shown right of the row (targets, teacher's top-k).
        source_titles: one title per source (e.g. its class).
    """

    group: str
    mixed: torch.Tensor
    sources: Sequence[torch.Tensor] | None = None
    masks: Sequence[torch.Tensor] | None = None
    lines: list[str] = field(default_factory=list)
    source_titles: Sequence[str] | None = None


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """[C,H,W] float in [0, 1] or uint8 -> numpy [H,W] (one channel) or [H,W,3]."""
    x = image.detach().cpu()
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    x = x.clamp(0, 1)
    if x.dim() == 3 and x.shape[0] == 1:
        return x[0].numpy()
    if x.dim() == 3:
        return x.permute(1, 2, 0).numpy()
    return x.numpy()


def topk_lines(probs: torch.Tensor, class_names: Sequence[str], k: int, prefix: str = "",
               skip_zero: bool = False) -> list[str]:
    """'prefix name p' lines for the k most probable classes of one probability vector
    (``skip_zero``: leave out classes of probability 0, e.g. in a target y_hat)."""
    values, index = probs.detach().float().cpu().topk(min(k, probs.numel()))
    names = [class_names[i] if i < len(class_names) else str(i) for i in index.tolist()]
    return [f"{prefix}{n} {v:.2f}" for n, v in zip(names, values.tolist())
            if not (skip_zero and v == 0.0)]


def rows_from_result(group: str, result, pixels: torch.Tensor, class_names: Sequence[str],
                     rows: Sequence[int], to_pixels=None) -> list[MixRow]:
    """Figure rows for some samples of a ``MixResult``.

    Args:
        group: row title; result: the MixResult; pixels: the batch's source images in pixel space
            [N,C,H,W] (what ``result.sources`` indexes); class_names: label names;
        rows: sample numbers to draw; to_pixels: maps ``result.mixed`` to pixel space.
    """
    k = result.sources.shape[1]
    masks = result.masks() if (result.mask_logits is not None or result.full_masks is not None) else None
    out = []
    for b in rows:
        src = result.sources[b].cpu()
        mixed = result.mixed[b:b + 1]
        mixed = (to_pixels(mixed) if to_pixels is not None else mixed)[0]
        labels = result.labels[result.sources[b]].cpu().tolist() if result.labels is not None else []
        titles = [class_names[y] if y < len(class_names) else str(y) for y in labels] or None
        lines = ["target: " + ", ".join(f"{t} {w:.2f}" for t, w in
                                        zip(titles or [], result.weights[b].cpu().tolist()))]
        if result.probs is not None:
            lines += ["teacher top-%d:" % k] + topk_lines(result.probs[b], class_names, k, "  ")
        if result.iters is not None and result.mask_logits is not None:
            lines.append(f"iters {int(result.iters[b])}, "
                         f"{'success' if bool(result.success[b]) else 'FAILED'}")
        out.append(MixRow(group=group, mixed=mixed, sources=[pixels[i] for i in src.tolist()],
                          masks=[masks[b, i] for i in range(k)] if masks is not None else None,
                          lines=lines, source_titles=titles))
    return out


def render_rows(rows: Sequence[MixRow], out: str | os.PathLike, title: str | None = None,
                dpi: int = 100) -> Path:
    """Draw the rows as a grid and write a PNG atomically; returns the path.

    Columns: sources (k), masks (k), mixed, text. Rows without sources or masks leave those
    cells empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .checkpoint import atomic_write_bytes

    if not rows:
        raise ValueError("render_rows: no rows to draw")
    k = max(len(r.sources or r.masks or [None, None]) for r in rows)
    n_img = 2 * k + 1
    n_cols = n_img + 1
    cell = 1.35
    fig = Figure(figsize=(cell * n_img + 2.6, cell * len(rows) + (0.5 if title else 0.2)))
    FigureCanvasAgg(fig)
    widths = [1.0] * n_img + [2.6 / cell]
    grid = fig.add_gridspec(len(rows), n_cols, width_ratios=widths, wspace=0.08, hspace=0.35,
                            left=0.08, right=0.99, top=0.92 if title else 0.97, bottom=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    column_titles = ([f"source {i}" for i in range(k)] + [f"mask {i}" for i in range(k)]
                     + ["mixed", ""])
    for r, row in enumerate(rows):
        axes = [fig.add_subplot(grid[r, c]) for c in range(n_cols)]
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for i in range(k):
            if row.sources is not None and i < len(row.sources):
                _show(axes[i], row.sources[i])
                if row.source_titles is not None and i < len(row.source_titles):
                    axes[i].set_xlabel(row.source_titles[i], fontsize=6, labelpad=1)
            else:
                axes[i].axis("off")
            if row.masks is not None and i < len(row.masks):
                axes[k + i].imshow(row.masks[i].detach().float().cpu().numpy(), cmap="viridis",
                                   vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                axes[k + i].axis("off")
        _show(axes[2 * k], row.mixed)
        axes[-1].axis("off")
        axes[-1].text(0.02, 0.5, "\n".join(row.lines), fontsize=6, va="center", ha="left",
                      family="monospace", transform=axes[-1].transAxes)
        axes[0].set_ylabel(row.group, fontsize=8)
        if row.sources is None:
            axes[0].axis("on")
            axes[0].set_frame_on(False)
            axes[0].set_xticks([])
            axes[0].set_yticks([])
        if r == 0:
            for c, name in enumerate(column_titles):
                if name:
                    axes[c].set_title(name, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def _show(ax, image: torch.Tensor) -> None:
    array = to_numpy_image(image)
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")


# ------------------------------------------------------------------------- demo, show ---
def run_demo(out: str = "supermix_demo.png", teacher: str | None = None, batch_size: int = 64,
             rows: int = 3, k: int = SolverConfig.k, seed: int = 0,
             max_iters: int = SolverConfig.max_iters,
             device: str | None = None, backend: str | None = None,
             mixers: tuple[str, ...] | None = None,
             print_fn=print) -> dict:
    """Mix one batch with each mixer, print the figures and write the grid; returns the figures.

    Returns:
        ``{"backend": str, "device": str, "out": path, "mixers": {name: {"mean_iters",
        "success_rate", "images_per_s", "seconds"}}}``.
    """
    from . import data as sdata
    from .errors import UsageError
    from .kernels import resolve_backend
    from .runtime import resolve_device
    from .teachers import load_teacher_for, locate_teacher

    if mixers is None:
        from .mixers import mixer_names
        mixers = mixer_names()
    if batch_size < k:
        raise UsageError(f"batch_size: expected >= k={k}, got {batch_size}")
    if rows < 1 or rows > batch_size:
        raise UsageError(f"rows: expected 1..{batch_size}, got {rows}")
    dev = resolve_device(device)
    teacher_path = locate_teacher(teacher)
    model, as_cifar, mean, std = load_teacher_for(teacher_path, DEMO_DATA, None, dev)
    try:
        used_backend = resolve_backend(dev, backend)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"backend: {e}") from e

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
    figures, results = _time_mixers(x, model, mixers, k, max_iters, seed, backend)
    path = _draw_demo(results, pixels, names, rows, out, k, to_pixels,
                      model.supermix_config.get("arch", "?"))
    _print_demo(print_fn, figures, teacher_path, model, batch_size, k, max_iters, dev,
                used_backend, path)
    return {"backend": used_backend, "device": str(dev), "out": str(path), "mixers": figures}


def _time_mixers(x: torch.Tensor, model, mixers, k: int, max_iters: int, seed: int,
                 backend: str | None) -> tuple[dict, dict]:
    """Each mixer mixes the batch x once from the same seed: ``(figures, results)`` by name."""
    from .generation import blind_success, make_mixer
    from .generation.settings import DEFAULTS as GENERATE_DEFAULTS
    from .mixers import MIXERS

    dev = x.device
    batch_size = x.shape[0]
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
    return figures, results


def _draw_demo(results: dict, pixels: torch.Tensor, names, rows: int, out, k: int, to_pixels,
               arch: str) -> Path:
    """The demo's grid: ``rows`` source sets, the same for every mixer."""
    from .mixers import MIXERS

    batch_size = pixels.shape[0]
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
        grid_rows += rows_from_result(MIXERS[name].name, result, pixels, names, picked,
                                      to_pixels=to_pixels)
    return render_rows(grid_rows, out, title=f"SuperMix vs MixUp vs CutMix, k={k}, teacher "
                                             f"{arch} on Fashion-MNIST test images (same "
                                             f"source sets per mixer)")


def _print_demo(print_fn, figures: dict, teacher_path: Path, model, batch_size: int, k: int,
                max_iters: int, dev: torch.device, used_backend: str, path: Path) -> None:
    from .kernels import backend_info
    from .mixers import MIXERS

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
        print_fn(f"{MIXERS[name].name:<10}{f['mean_iters']:>12.2f}{f['success_rate']:>10.1%}"
                 f"{f['images_per_s']:>11.1f}")
    print_fn("success: the teacher's top-u classes are the sources' u classes (paper sec. 3)")
    print_fn(f"wrote {path}")


def draw_mixed_set(root: str, out: str, num: int = 8, start: int = 0, verify: bool = True,
         data_root: str | None = None, log=None) -> Path:
    """Render samples ``start .. start+num-1`` of the generated set in ``root`` to ``out``."""
    from .errors import UsageError
    from .generation import ImageSource
    from .kernels import normalised_masks
    from .mixed_set import MixedDataset

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if num < 1:
        raise UsageError(f"num: expected an integer >= 1, got {num}")
    ds = MixedDataset(root, verify=verify, allow_incomplete=True)
    if start < 0 or start >= len(ds):
        raise UsageError(f"start: expected 0..{len(ds) - 1}, got {start}")
    stop = min(len(ds), start + num)
    names = ds.class_names
    meta = ds.manifest["data"]
    k = int(ds.manifest["config"]["k"])
    image_shape = tuple(ds.manifest["config"]["image_shape"])
    source = None
    try:
        spec = meta["spec"] if data_root is None else meta["given"]
        source = ImageSource(spec, data_root, meta["split"] == "train", bool(meta["as_cifar"]),
                              meta["mean"], meta["std"], torch.device("cpu"),
                              image_size=int(image_shape[-1]))
        # Other data under --data-root than the set was mixed from: its sources would mislead.
        if tuple(source.shape) != image_shape:
            raise UsageError(f"data_root: the set was mixed from {image_shape} images, the "
                             f"data's are {tuple(source.shape)}")
    except UsageError as e:
        source = None
        log(f"supermix show: sources not drawn: {e}")
    has_masks = ds.has_field("mask_logits")
    rows = []
    for i in range(start, stop):
        mixed = ds.image(i)
        sources = ds.field("sources", i)
        masks = None
        if has_masks:
            masks = normalised_masks(ds.field("mask_logits", i)[None], mixed.shape[-2:])[0]
        lines = ["target:"] + topk_lines(ds.field("y_hat", i), names, k, "  ", skip_zero=True)
        lines += [f"teacher top-{k}:"] + topk_lines(ds.field("teacher_probs", i), names, k, "  ")
        lines.append(f"iters {int(ds.field('iters', i))}, "
                     f"{'success' if bool(ds.field('success', i)) else 'FAILED'}")
        rows.append(MixRow(
            group=f"#{i}", mixed=mixed,
            sources=list(source.pixels(sources)) if source is not None else None,
            masks=list(masks) if masks is not None else None, lines=lines,
            source_titles=[f"data[{int(s)}]" for s in sources]))
    mixer = ds.manifest["config"]["mixer"]
    return render_rows(rows, out, title=f"{root}: {mixer}, samples {start}..{stop - 1} of {len(ds)}")
