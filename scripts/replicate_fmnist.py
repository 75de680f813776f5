#!/usr/bin/env python
"""Fashion-MNIST replication of the paper's distillation study (Tables 2-3), on a CPU.

The shipped ResNet-20 teacher (trained on all 60000 training images) is distilled into a
ResNet-8 student that sees only the first ``--labelled`` training images (the data-limited
setting the paper's sec. 4.2 argues mixing helps most). Methods, each trained with every seed:

    student alone   CE on the labelled images
    KD              Hinton KD (T = 4, weights 0.1 CE + 0.9 KD, CRD's setting)
    CE + X          CE on the labelled images + "CE distillation" on set X (teacher's top class)
    KD + X          KD on the labelled images and on set X

for X in MixUp, CutMix and SuperMix sets of the same size (``--kappa`` times the labelled
images), mixed from the labelled images only, k = 2, alpha = 3 (paper sec. 4), all labelled by
the teacher. Sets are made once (seed 0) by ``supermix generate --limit`` (the first
``--labelled`` training images only, the data-limited setting); SuperMix samples that miss the
termination criterion are dropped and more are drawn. Every run is one ``supermix distill`` command
(printed in the report) with ``--epochs E`` in passes over the labelled images, so every method
does the same number of SGD steps (the paper's 1/kappa epoch scaling).

Writes ``docs/RESULTS.md`` (table: mean +- std test top-1 over seeds, per-seed values, wall
time per run; the exact commands and seeds) and ``docs/replication.png``. Runs ``--jobs``
trainings at once, one thread each. ``--quick`` runs the same pipeline on a tiny subset in a few
minutes, writes its report into ``--out`` only, and asserts that every method trains and beats
chance (10%).

    python scripts/replicate_fmnist.py            # the full study: 45-70 min on 2 cores
    python scripts/replicate_fmnist.py --quick    # smoke test
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(1, str(ROOT))

import torch  # noqa: E402

MIXERS = ("mixup", "cutmix", "supermix")
MIXER_TITLES = {"mixup": "MixUp", "cutmix": "CutMix", "supermix": "SuperMix"}
CE = ["--w-ce", "1"]
KD = ["--w-ce", "0.1", "--w-kd", "0.9", "--T", "4"]


@dataclass
class Method:
    name: str
    flags: list[str]
    mixer: str | None = None


def methods() -> list[Method]:
    out = [Method("Student alone (CE)", CE), Method("KD", KD)]
    out += [Method(f"CE + {MIXER_TITLES[m]}", CE + ["--w-mixed-ce", "1"], m) for m in MIXERS]
    out += [Method(f"KD + {MIXER_TITLES[m]}", KD + ["--w-mixed-kd", "0.9"], m) for m in MIXERS]
    return out


@dataclass
class Settings:
    labelled: int
    kappa: float
    epochs: int
    batch_size: int
    seeds: list[int]
    limit_test: int | None
    jobs: int
    student: str = "resnet8"
    lr: float = 0.1

    @property
    def mixed_size(self) -> int:
        return int(round(self.kappa * self.labelled))


# 32 epochs of 23 steps (3000 / 128) for the plain runs; 8 epochs of 93 steps (12000 / 128)
# for the runs with a mixed set: 736 and 744 steps.
FULL = dict(labelled=3000, kappa=4.0, epochs=32, batch_size=128, seeds=[0, 1],
            limit_test=None)
QUICK = dict(labelled=512, kappa=1.0, epochs=3, batch_size=64, seeds=[0, 1], limit_test=500)


# ------------------------------------------------------------------------------ mixed sets ---
def generate_command(out: Path, mixer_name: str, teacher_path: Path, labelled: int, size: int,
                     seed: int = 0, batch_size: int = 128) -> list[str]:
    """The ``supermix generate`` command that mixes ``size`` samples from the first
    ``labelled`` training images into ``out`` (k = 2, alpha = 3, the paper's solver settings)."""
    return ["supermix", "generate", "--teacher", _shown(teacher_path), "--data", "fashion-mnist",
            "--limit", str(labelled), "--size", str(size), "--mixer", mixer_name,
            "--solver-preset", "fashion-mnist", "--max-iters", "50", "--seed", str(seed),
            "--batch-size", str(batch_size), "--shard-size", "4096", "--device", "cpu",
            "--threads", "1", "--no-progress", "--out", _shown(out)]


def write_mixed_set(out: Path, mixer_name: str, teacher_path: Path, labelled: int, size: int,
                    seed: int = 0, batch_size: int = 128, log=print) -> dict:
    """Run :func:`generate_command` (which resumes a killed run and reuses a finished set);
    returns the manifest."""
    command = generate_command(out, mixer_name, teacher_path, labelled, size, seed, batch_size)
    proc = subprocess.run([sys.executable, "-m", "supermix", *command[1:]], env=_env(),
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["totals"]
    log(f"  {mixer_name}: {t['kept']} samples (drawn {t['generated']}, criterion met by "
        f"{t['success_rate']:.1%}, mean iterations {t['mean_iters']:.2f})")
    return manifest


# ------------------------------------------------------------------------------------ runs ---
@dataclass
class Run:
    method: Method
    seed: int
    out: Path
    command: list[str]
    top1: float | None = None
    top5: float | None = None
    seconds: float | None = None
    returncode: int | None = None
    log: Path | None = None


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (commands run from there)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def distill_command(s: Settings, m: Method, seed: int, out: Path, sets: dict[str, Path],
                    teacher: Path) -> list[str]:
    out, teacher = _shown(out), _shown(teacher)
    cmd = ["supermix", "distill", "--teacher", str(teacher), "--student", s.student,
           "--limit-train", str(s.labelled), "--epochs", str(s.epochs),
           "--batch-size", str(s.batch_size), "--lr", str(s.lr), "--seed", str(seed),
           "--threads", "1", "--out", str(out), "--no-progress", *m.flags]
    if m.mixer:
        cmd += ["--mixed", _shown(sets[m.mixer])]
    else:
        # The same number of test evaluations as the runs with a mixed set.
        cmd += ["--eval-every", str(max(1, int(round(s.kappa))))]
    if s.limit_test:
        cmd += ["--limit-test", str(s.limit_test)]
    return cmd


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), str(ROOT),
                                                      env.get("PYTHONPATH")]))
    return env


def execute(run: Run) -> Run:
    env = _env()
    run.out.mkdir(parents=True, exist_ok=True)
    run.log = run.out / "stdout.txt"
    argv = [sys.executable, "-m", "supermix", *run.command[1:]]
    t0 = time.perf_counter()
    end = _end_record(run.out)
    if end is None:
        if (run.out / "checkpoint.pt").exists():
            argv.append("--resume")  # an interrupted study: continue the run
        with open(run.log, "a") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        run.returncode = proc.returncode
        end = _end_record(run.out)
    if end is not None:
        run.top1, run.top5 = end.get("test_top1"), end.get("test_top5")
        run.seconds = end.get("elapsed_s", time.perf_counter() - t0)
    return run


def _end_record(out: Path) -> dict | None:
    log = out / "log.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    ends = [r for r in records if r.get("event") == "end"]
    return ends[-1] if ends else None


# ---------------------------------------------------------------------------------- report ---
def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_report(path: Path, plot: Path, s: Settings, runs: list[Run], sets: dict, teacher: dict,
                 total_s: float, quick: bool) -> None:
    by_method: dict[str, list[Run]] = {}
    for r in runs:
        by_method.setdefault(r.method.name, []).append(r)
    base = statistics.fmean([r.top1 for r in by_method["Student alone (CE)"]])
    lines = [
        "# Fashion-MNIST replication" + (" (--quick smoke run)" if quick else ""),
        "",
        "Produced by `python scripts/replicate_fmnist.py" + (" --quick" if quick else "") + "`. "
        "The paper's distillation study (sec. 4.2, Tables 2-3) scaled to a 2-core CPU: the "
        f"shipped ResNet-20 teacher ({teacher['acc_text']} test top-1, trained on all 60000 "
        f"training images) is distilled into a {s.student} student that sees only the first "
        f"{s.labelled} labelled training images. Mixed sets of {s.mixed_size} images "
        f"(kappa = {s.kappa:g}) are mixed from those {s.labelled} images only, k = 2, "
        "alpha = 3, and labelled by the teacher. Every method does the same number of SGD steps "
        f"({s.epochs} epochs of the labelled images at batch {s.batch_size}; with a mixed set "
        "each step also has a batch of mixed images and the epochs scale by 1/kappa). Test "
        f"top-1 on {'the first ' + str(s.limit_test) if s.limit_test else 'all 10000'} test "
        f"images after the last epoch, {len(s.seeds)} seeds (student initialisation, batch "
        "order, augmentation); the mixed sets are generated once (seed 0).",
        "",
        "| method | test top-1 % (mean ± std) | vs. student alone | per seed "
        "| training time / run |",
        "|---|---|---|---|---|",
    ]
    for name, rs in by_method.items():
        values = [r.top1 for r in rs]
        per_seed = ", ".join(f"{100 * v:.2f}" for v in values)
        delta = 100 * (statistics.fmean(values) - base)
        wall = statistics.fmean([r.seconds for r in rs])
        wall_text = f"{wall / 60:.1f} min" if wall >= 60 else f"{wall:.0f} s"
        lines.append(f"| {name} | {_fmt(values)} | {delta:+.2f} | {per_seed} | {wall_text} |")
    lines += ["", f"Teacher (ResNet-20, all training data): {teacher['acc_text']} test top-1.", ""]
    lines += ["## Mixed sets", "",
              "| set | images | drawn | termination criterion met | mean solver iterations | "
              "time |", "|---|---|---|---|---|---|"]
    for mixer in MIXERS:
        t = sets[mixer]["totals"]
        seconds = sum(e.get("seconds") or 0.0 for e in sets[mixer]["shards"])
        lines.append(f"| {MIXER_TITLES[mixer]} | {t['kept']} | {t['generated']} | "
                     f"{100 * t['success_rate']:.1f}% | {t['mean_iters']:.2f} | "
                     f"{seconds:.0f} s |")
    lines += ["", "For MixUp and CutMix the criterion (does the teacher see both source classes "
              "in the mixed image?) is only recorded; SuperMix samples that miss it are dropped "
              "and replaced, as `supermix generate` does.", ""]
    lines += ["## Setup", "",
              f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
              f"cores, {s.jobs} runs at a time with 1 thread each; torch {torch.__version__}.",
              f"- Total wall time of the study: {total_s / 60:.1f} min.",
              f"- Seeds: {', '.join(str(v) for v in s.seeds)}.",
              "- Objectives: CE = cross-entropy on the labelled images (weight 1); KD = "
              "0.1 CE + 0.9 KD (T = 4) on the labelled images; '+ X' adds, on the set X, the "
              "cross-entropy to the teacher's top class on the augmented mixed image (CE rows, "
              "weight 1) or KD (KD rows, weight 0.9).",
              "- Schedule: SGD momentum 0.9, weight decay 5e-4, lr 0.1 decayed by 0.1 at 1/3, 1/2, "
              "2/3 and 5/6 of the run (the paper's 200/300/400/500 of 600).",
              "", "## Commands", "",
              "Run from the repository root (`supermix` is the installed command, or "
              "`python -m supermix` with `python/` on `PYTHONPATH`): the mixed sets, then the "
              "runs.", "", "```"]
    for mixer in MIXERS:
        lines.append(sets[mixer]["arguments"]["command_line"])
    for r in runs:
        lines.append(shlex.join(r.command))
    lines += ["```", "", "![replication](replication.png)" if not quick else "", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    _plot(plot, by_method, teacher, s)


def _plot(path: Path, by_method: dict[str, list[Run]], teacher: dict, s: Settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_method)
    means = [100 * statistics.fmean([r.top1 for r in by_method[n]]) for n in names]
    stds = [100 * (statistics.stdev([r.top1 for r in by_method[n]])
                   if len(by_method[n]) > 1 else 0.0) for n in names]
    colours = ["#888888", "#555555"] + ["#4c72b0", "#dd8452", "#55a868"] * 2
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colours[:len(names)])
    if teacher.get("acc") is not None:
        ax.axhline(100 * teacher["acc"], color="k", linestyle="--", linewidth=1,
                   label=f"teacher ResNet-20 ({100 * teacher['acc']:.2f}%)")
        ax.legend(loc="lower right")
    low = min(m - e for m, e in zip(means, stds))
    ax.set_ylim(max(0.0, low - 3), min(100.0, max(max(means), 100 * (teacher.get("acc") or 0)) + 2))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=25, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Fashion-MNIST, {s.student} student, {s.labelled} labelled images, "
                 f"mixed sets of {s.mixed_size}; mean ± std over {len(s.seeds)} seeds",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main ---
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (a few minutes)")
    p.add_argument("--out", default=None, help="work folder (default runs/replicate-fmnist"
                                               "[-quick])")
    p.add_argument("--results", default=None, help="report (default docs/RESULTS.md; "
                                                   "--quick: <out>/RESULTS.md)")
    p.add_argument("--plot", default=None, help="bar plot (default docs/replication.png; "
                                                "--quick: <out>/replication.png)")
    p.add_argument("--teacher", default=None, help="teacher (default: the shipped one)")
    p.add_argument("--labelled", type=int, default=None)
    p.add_argument("--kappa", type=float, default=None, help="mixed set size / labelled")
    p.add_argument("--epochs", type=int, default=None, help="passes over the labelled images")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs at a time (one thread each)")
    args = p.parse_args(argv)

    from supermix.checkpoint import load_checkpoint
    from supermix.teachers import default_teacher_path

    base = dict(QUICK if args.quick else FULL)
    for key in ("labelled", "kappa", "epochs", "batch_size", "limit_test"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.seeds:
        base["seeds"] = [int(v) for v in args.seeds.split(",")]
    s = Settings(jobs=max(1, args.jobs), **base)
    out = Path(args.out or ROOT / ("runs/replicate-fmnist" + ("-quick" if args.quick else "")))
    results = Path(args.results) if args.results else (
        out / "RESULTS.md" if args.quick else ROOT / "docs/RESULTS.md")
    plot = Path(args.plot) if args.plot else (
        out / "replication.png" if args.quick else ROOT / "docs/replication.png")
    teacher_path = Path(args.teacher) if args.teacher else default_teacher_path()
    if not teacher_path.is_file():
        print(f"replicate_fmnist: no teacher at {teacher_path}", file=sys.stderr)
        return 2
    teacher_path = teacher_path.resolve()
    acc = load_checkpoint(teacher_path)["config"].get("test_accuracy")
    teacher = {"acc": acc, "acc_text": f"{100 * acc:.2f}%" if acc is not None else "unknown"}

    t0 = time.perf_counter()
    # Sets are mixed in this process with one thread, while the runs without a mixed set train
    # in the other worker; the runs with one start when the sets are written.
    torch.set_num_threads(1)
    sets = {m: out / "sets" / f"{m}-{s.labelled}-{s.mixed_size}" for m in MIXERS}
    manifests: dict[str, dict] = {}

    def make_sets() -> None:
        print(f"mixed sets: {s.mixed_size} images each from the first {s.labelled} training "
              f"images", flush=True)
        for mixer in MIXERS:
            manifests[mixer] = write_mixed_set(sets[mixer], mixer, teacher_path, s.labelled,
                                               s.mixed_size)
        print(f"mixed sets done after {time.perf_counter() - t0:.0f}s", flush=True)

    runs = []
    # Longest runs first, so the workers finish together.
    for m in sorted(methods(), key=lambda m: (m.mixer is None, "KD" not in m.name)):
        for seed in s.seeds:
            name = m.name.replace(" ", "").replace("(", "").replace(")", "").replace("+", "_")
            run_out = out / "runs" / f"{name}-s{seed}"
            runs.append(Run(m, seed, run_out, distill_command(s, m, seed, run_out, sets,
                                                              teacher_path)))

    def report(run: Run) -> Run:
        status = (f"top1 {100 * run.top1:.2f}%" if run.top1 is not None
                  else f"FAILED (exit {run.returncode}, see {run.log})")
        print(f"  {run.method.name:<20} seed {run.seed}: {status}"
              + (f", {run.seconds / 60:.1f} min" if run.seconds else ""), flush=True)
        return run

    with concurrent.futures.ThreadPoolExecutor(max_workers=s.jobs) as pool:
        sets_done = pool.submit(make_sets)
        plain = [pool.submit(lambda r: report(execute(r)), r) for r in runs if not r.method.mixer]
        sets_done.result()
        mixed = [pool.submit(lambda r: report(execute(r)), r) for r in runs if r.method.mixer]
        for future in plain + mixed:
            future.result()
    failed = [r for r in runs if r.top1 is None]
    if failed:
        print(f"replicate_fmnist: {len(failed)} run(s) failed", file=sys.stderr)
        return 1
    order = {m.name: i for i, m in enumerate(methods())}
    runs.sort(key=lambda r: (order[r.method.name], r.seed))
    total = time.perf_counter() - t0
    write_report(results, plot, s, runs, manifests, teacher, total, args.quick)
    print(f"wrote {results} and {plot} ({total / 60:.1f} min)", flush=True)
    if args.quick:
        bad = [f"{r.method.name} seed {r.seed}: {r.top1:.3f}" for r in runs if r.top1 <= 0.10]
        assert not bad, f"methods at or below chance (10%): {bad}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
