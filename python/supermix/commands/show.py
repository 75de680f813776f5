"""``supermix show DIR``: draw samples of a generated set with their sources and masks.

Masks are the normalised full-resolution masks of eq. 4, computed from the stored
``mask_logits`` (``supermix.kernels.normalised_masks``); the blind mixers store none.
The sources are read from the data set the manifest names; when it cannot be read, the rows
show the masks and the mixed image only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..viz import draw_mixed_set

__all__ = ["show", "add_parser", "run"]

# The drawing is the library's (supermix.viz); the command names it by its old name.
show = draw_mixed_set


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
