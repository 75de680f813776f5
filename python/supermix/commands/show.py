"""``supermix show DIR``: draw samples of a generated set with their sources and masks.

Masks are the normalised full-resolution masks of eq. 4, computed from the stored
``mask_logits`` (``supermix.kernels.normalised_masks``); the blind mixers store none.
The sources are read from the data set the manifest names; when it cannot be read, the rows
show the masks and the mixed image only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import UsageError

__all__ = ["show", "add_parser", "run"]


def show(root: str, out: str, num: int = 8, start: int = 0, verify: bool = True,
         data_root: str | None = None, log=None) -> Path:
    """Render samples ``start .. start+num-1`` of the generated set in ``root`` to ``out``."""
    from ..generation import ImageSource
    from ..kernels import normalised_masks
    from ..mixed_set import MixedDataset
    from ..viz import MixRow, render_rows, topk_lines

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if num < 1:
        raise UsageError(f"--num: expected an integer >= 1, got {num}")
    ds = MixedDataset(root, verify=verify, allow_incomplete=True)
    if start < 0 or start >= len(ds):
        raise UsageError(f"--start: expected 0..{len(ds) - 1}, got {start}")
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
            raise UsageError(f"--data-root: the set was mixed from {image_shape} images, the "
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``show`` subcommand."""
    p = subparsers.add_parser("show", help="draw samples of a generated set (sources, masks)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="folder written by 'supermix generate'")
    p.add_argument("--out", default=None, help="PNG to write (default DIR/show.png)")
    p.add_argument("--num", type=int, default=8, help="samples to draw")
    p.add_argument("--start", type=int, default=0, help="first sample")
    p.add_argument("--data-root", default=None, help="where the source data set lives now")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the sha256 check of the shards")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.dir) / "show.png")
    path = show(args.dir, out, num=args.num, start=args.start, verify=args.verify,
                data_root=args.data_root)
    print(f"wrote {path}")
    return 0
