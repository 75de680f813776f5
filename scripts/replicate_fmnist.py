#!/usr/bin/env python
"""Does SuperMix beat blind mixing for distillation? A paired, seeded study on Fashion-MNIST.

The paper's distillation study (sec. 4.2, Tables 2-3) scaled to a 2-core CPU. The shipped
ResNet-20 teacher (trained on all 60000 training images) is distilled into a ResNet-8 student
that sees only the first ``--labelled`` training images (the data-limited setting the paper
argues mixing helps most), with mixed sets of ``--kappa`` times the labelled images, mixed from
the labelled images only. Paired design: seed s draws its own mixed sets (``supermix generate
--seed s``), student initialisation, batch order and augmentation (``supermix distill --seed
s``); every method sees seed s's draws. Two protocols (``--protocol``):

    paper      (default) the original code's objective (``distill --recipe paper``: 1.8 CE on
               the real images + 1.8 CE to the teacher's top class on the mixed images + 0.2
               KD_4 on the real images), SuperMix sets from the paper's solver (newton_sp,
               ``--min-iters 1``, failures dropped) against CutMix sets of the same size, 80
               epochs (the pilot's plateau), kappa 3, 12 seeds; then reruns of seeds 0 and 1
               (determinism) and the other arms on the first 4 seeds (the default solver,
               MixUp, KD without mixed images). About 84 minutes per four seeds here: run it
               in parts with ``--seeds`` (each part's sets and runs are complete on their
               own; docs/study-notes.md lists the parts).
               The reading rule is fixed in PAPER_PROTOCOL before any number; Holm's
               correction covers every paired row.
    kd-mixed   the earlier study (docs/study-kd-mixed.md): KD on the mixed images too
               (``--recipe kd-mixed``), the default solver, 12 epochs, kappa 2, 15 seeds,
               ablations (newton_sp, min_iters 1, k 3, CE with either label) on the first 5.

Every set and run is one ``supermix generate`` / ``distill`` / ``train`` command (all printed in
the report); both resume, so a killed study continues where it stopped when rerun with the same
arguments. ``--jobs`` commands run at a time, one thread each.

Writes ``docs/RESULTS.md`` (``docs/RESULTS-kd-mixed.md`` for the earlier protocol): per method
mean and 95% CI, paired differences with 95% CIs, t-test and Holm p-values, the seeds' set
measures and the question's trend against the seed number, the reruns, the commands; and
``docs/replication[-kd-mixed].png``. ``--report-only`` writes them from the runs finished so far.
``--quick`` runs the whole pipeline on a tiny subset in a few minutes, writes into ``--out``
only, and checks that every run beat chance.

    nohup python scripts/replicate_fmnist.py > study.log 2>&1 &   # the paper's protocol
    python scripts/replicate_fmnist.py --quick                     # the pipeline, a few minutes
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(1, str(ROOT))

import torch  # noqa: E402

from supermix.study import (PAPER_PROTOCOL, PROTOCOLS, Settings, collect,  # noqa: E402
                            execute_all, plan, write_report)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny pipeline run (a few minutes)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the runs finished so far; run nothing")
    p.add_argument("--out", default=None,
                   help="work folder (default runs/replicate-fmnist-e<epochs> for the paper "
                        "protocol, runs/replicate-fmnist-kd-mixed, or -quick)")
    p.add_argument("--results", default=None,
                   help="report (default docs/RESULTS.md, docs/RESULTS-kd-mixed.md for the "
                        "earlier protocol; --quick: <out>/RESULTS.md)")
    p.add_argument("--plot", default=None,
                   help="plot (default docs/replication[-kd-mixed].png; --quick: "
                        "<out>/replication.png)")
    p.add_argument("--notes", default=None,
                   help="a Markdown file whose text the report puts under its answer (the "
                        "reading of the results; default docs/study-notes[-kd-mixed].md when it "
                        "exists, none with --quick)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=PAPER_PROTOCOL.key,
                   help="paper: the original code's objective, newton_sp sets, to the plateau "
                        "(default); kd-mixed: the earlier study (KD on the mixed images too)")
    p.add_argument("--appendix", default=None,
                   help="a Markdown file appended to the report (default, for the paper "
                        "protocol: docs/study-kd-mixed.md, the earlier protocol's study)")
    p.add_argument("--teacher", default=None, help="teacher (default: the shipped one)")
    p.add_argument("--labelled", type=int, default=None)
    p.add_argument("--kappa", type=float, default=None, help="mixed set size / labelled")
    p.add_argument("--epochs", type=int, default=None, help="passes over the labelled images")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    p.add_argument("--ablation-seeds", "--extra-seeds", dest="ablation_seeds", type=int,
                   default=None, help="ablations / other arms on this many of the first seeds")
    p.add_argument("--rerun-seeds", type=int, default=None,
                   help="make the main sets and runs of this many first seeds again, to show "
                        "they are deterministic")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="commands at a time (one thread each)")
    return p


def _settings(args, proto) -> Settings:
    """The protocol's sizes (full or quick), each given flag replacing its value."""
    base = {"rerun_seeds": 0, **(proto.quick if args.quick else proto.full)}
    for key in ("labelled", "kappa", "epochs", "batch_size", "limit_test", "ablation_seeds",
                "rerun_seeds"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.seeds:
        base["seeds"] = [int(v) for v in args.seeds.split(",")]
    return Settings(jobs=max(1, args.jobs), **base)


def _text(path: Path | None) -> str | None:
    return path.read_text() if path is not None and path.is_file() else None


def _run(jobs, s: Settings, out: Path, proto) -> float | None:
    """Run the jobs; their wall time in minutes, None when one failed (named on stderr)."""
    t0 = time.perf_counter()
    print(f"study ({proto.key}): {len(jobs)} commands, {s.jobs} at a time, in {out}", flush=True)
    failures = execute_all(jobs, s.jobs)
    total_min = (time.perf_counter() - t0) / 60
    (out / "wall.json").write_text(json.dumps({"minutes": total_min}))
    if failures:
        print("replicate_fmnist: failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return None
    return total_min


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from supermix.checkpoint import load_checkpoint
    from supermix.teachers import default_teacher_path

    proto = PROTOCOLS[args.protocol]
    s = _settings(args, proto)
    suffix = "" if proto is PAPER_PROTOCOL else f"-{proto.key}"
    # The paper protocol's work folder names its epochs: runs of another length never mix.
    folder = ("runs/replicate-fmnist" + suffix
              + (f"-e{s.epochs}" if proto is PAPER_PROTOCOL and not args.quick else "")
              + ("-quick" if args.quick else ""))
    out = Path(args.out or ROOT / folder)
    results = Path(args.results) if args.results else (
        out / "RESULTS.md" if args.quick else ROOT / f"docs/RESULTS{suffix}.md")
    plot = Path(args.plot) if args.plot else (
        out / "replication.png" if args.quick else ROOT / f"docs/replication{suffix}.png")
    teacher_path = Path(args.teacher) if args.teacher else default_teacher_path()
    if not teacher_path.is_file():
        print(f"replicate_fmnist: no teacher at {teacher_path}", file=sys.stderr)
        return 2
    teacher_path = teacher_path.resolve()
    acc = load_checkpoint(teacher_path)["config"].get("test_accuracy")
    teacher = {"acc": acc, "text": f"{100 * acc:.2f}%" if acc is not None else "unknown"}
    torch.set_num_threads(1)

    jobs, sets, runs, reruns = plan(proto, s, out, teacher_path)
    total_min = None
    if not args.report_only:
        total_min = _run(jobs, s, out, proto)
        if total_min is None:
            return 1
    elif (out / "wall.json").is_file():  # the last full run's wall time
        total_min = json.loads((out / "wall.json").read_text())["minutes"]
    res = collect(s, sets, runs, reruns)
    if not res.top1:
        print("replicate_fmnist: no finished run to report", file=sys.stderr)
        return 1
    rerun_jobs = set(map(id, reruns.values()))
    main_jobs = [j for j in jobs if id(j) not in rerun_jobs]
    commands = [shlex.join(j.command) for j in main_jobs if j.is_set] + \
               [shlex.join(j.command) for j in main_jobs if not j.is_set]
    notes = _text(Path(args.notes) if args.notes else (
        None if args.quick else ROOT / "docs" / f"study-notes{suffix}.md"))
    appendix = _text(Path(args.appendix) if args.appendix else (
        ROOT / "docs" / "study-kd-mixed.md" if proto is PAPER_PROTOCOL and not args.quick
        else None))
    write_report(results, plot, proto, s, res, teacher, commands, total_min, args.quick, notes,
                 appendix)
    print(f"wrote {results} and {plot}", flush=True)
    if args.quick:
        bad = [f"{key} seed {seed}: {v:.3f}" for key, per in res.top1.items()
               for seed, v in per.items() if v <= 0.10]
        assert not bad, f"runs at or below chance (10%): {bad}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
