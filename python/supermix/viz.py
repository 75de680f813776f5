"""Figures of mixed samples: per row the k sources, their masks, the mixed image and the
teacher's top classes.

Drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing
here touches pyplot's global backend or needs a display. Images are given in pixel space,
float [C,H,W] in [0, 1] (or uint8); masks are full-resolution [H,W] in [0, 1].
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["MixRow", "render_rows", "topk_lines", "to_numpy_image", "rows_from_result"]


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
