"""The study's runner: the jobs of a design in the order they start, run ``workers`` at a time
(each one ``supermix`` command, resumed when rerun), and the results they leave."""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .design import (REPO, Protocol, Settings, generate_command, run_path, set_path,
                     training_command)
from .measures import mixed_set_statistics

__all__ = ["Job", "plan", "execute_all", "Results", "collect", "end_record"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), str(REPO),
                                                      env.get("PYTHONPATH")]))
    return env


def end_record(out: Path) -> dict | None:
    log = out / "log.jsonl"
    if not log.is_file():
        return None
    ends = [r for r in (json.loads(line) for line in log.read_text().splitlines() if line.strip())
            if r.get("event") == "end"]
    return ends[-1] if ends else None


@dataclass
class Job:
    """One command of the study; ``depends`` must finish first."""

    name: str
    command: list[str]
    out: Path
    depends: list["Job"] = field(default_factory=list)
    is_set: bool = False
    future: concurrent.futures.Future | None = None

    def done(self) -> bool:
        if self.is_set:
            manifest = self.out / "manifest.json"
            return manifest.is_file() and bool(json.loads(manifest.read_text()).get("complete"))
        return end_record(self.out) is not None

    def execute(self) -> None:
        for dep in self.depends:
            if dep.future is not None:
                dep.future.result()  # raises if the set failed
        if self.done():
            return
        argv = [sys.executable, "-m", "supermix", *self.command[1:]]
        if not self.is_set and (self.out / "checkpoint.pt").exists():
            argv.append("--resume")  # an interrupted study: continue the run
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.out / "stdout.txt", "a") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        if proc.returncode != 0 or not self.done():
            raise RuntimeError(f"{self.name} failed (exit {proc.returncode}); see "
                               f"{self.out / 'stdout.txt'}")
        print(f"  {self.name}: done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def plan(proto: Protocol, s: Settings, out: Path, teacher: Path
         ) -> tuple[list[Job], dict, dict, dict]:
    """The jobs in the order they start: the main methods seed by seed (a seed's sets before
    its runs, the quick blind sets first so that a worker is free to train while the other
    solves), then the reruns (the main sets and runs of the first ``rerun_seeds`` seeds again,
    in ``out/rerun``), then the distill ablations seed by seed, then the train ablations seed
    by seed, so that a study cut short still has its answer and its determinism check.
    Returns ``(jobs, sets, runs, reruns)`` with ``sets[(kind, seed)]``, ``runs[(method,
    seed)]`` and ``reruns[(key, seed)]`` (sets and runs of the rerun)."""
    jobs: list[Job] = []
    sets: dict[tuple[str, int], Job] = {}
    runs: dict[tuple[str, int], Job] = {}
    reruns: dict[tuple[str, int], Job] = {}

    def add(seed: int, ablation: bool, command: str | None = None, root: Path = out,
            set_jobs: dict = sets, run_jobs: dict = runs) -> None:
        for kind in sorted((k for k in proto.set_kinds if k.ablation == ablation
                            and (k.key, seed) not in set_jobs),
                           key=lambda k: k.key.startswith("supermix")):
            path = set_path(root, s, kind, seed)
            job = Job(f"generate {kind.key} seed {seed}" + (" (rerun)" if root != out else ""),
                      generate_command(s, kind, seed, path, teacher), path, is_set=True)
            set_jobs[(kind.key, seed)] = job
            jobs.append(job)
        for m in sorted((m for m in proto.methods if m.ablation == ablation
                         and command in (None, m.command)),
                        # Distill: the blind sets' runs first (their sets are ready first);
                        # the label runs: SuperMix's pair first (the question), CutMix's after.
                        key=lambda m: (m.set_key or "").startswith("supermix") != (
                            m.command == "train")):
            mixed = set_jobs.get((m.set_key, seed)) or sets.get((m.set_key, seed))
            path = run_path(root, m, seed)
            job = Job(f"{m.key} seed {seed}" + (" (rerun)" if root != out else ""),
                      training_command(s, m, seed, path, mixed.out if mixed else None, teacher),
                      path, [mixed] if mixed else [])
            run_jobs[(m.key, seed)] = job
            jobs.append(job)

    for seed in s.seeds:
        add(seed, ablation=False)
    for seed in s.seeds[:s.rerun_seeds]:
        add(seed, ablation=False, root=out / "rerun", set_jobs=reruns, run_jobs=reruns)
    # The ablations of the solver's settings first, the label ablation (cheap runs) last.
    for seed in s.seeds[:s.ablation_seeds]:
        add(seed, ablation=True, command="distill")
    for seed in s.seeds[:s.ablation_seeds]:
        add(seed, ablation=True, command="train")
    return jobs, sets, runs, reruns


def execute_all(jobs: list[Job], workers: int) -> list[str]:
    """Run the jobs, ``workers`` at a time, in list order (a job waits for its dependencies,
    which come earlier in the list, so this cannot deadlock); returns the failures."""
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for job in jobs:
            job.future = pool.submit(job.execute)
        for job in jobs:
            try:
                job.future.result()
            except Exception as e:  # noqa: BLE001 - report every failure, keep the rest
                failures.append(f"{job.name}: {e}")
    return failures


@dataclass
class Results:
    """What the finished jobs hold: accuracies per method and seed, per-set measures, and the
    reruns' accuracies and set checksums."""

    top1: dict[str, dict[int, float]]
    minutes: dict[str, list[float]]
    sets: dict[str, dict[int, dict]]
    rerun_top1: dict[str, dict[int, float]] = field(default_factory=dict)
    rerun_sets: dict[str, dict[int, bool]] = field(default_factory=dict)


def _shard_digests(out: Path) -> list[str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [shard["sha256"] for shard in manifest["shards"]]


def collect(s: Settings, sets: dict, runs: dict, reruns: dict | None = None) -> Results:
    top1: dict[str, dict[int, float]] = {}
    minutes: dict[str, list[float]] = {}
    for (key, seed), job in runs.items():
        end = end_record(job.out)
        if end is None or end.get("test_top1") is None:
            continue
        top1.setdefault(key, {})[seed] = float(end["test_top1"])
        minutes.setdefault(key, []).append(float(end.get("elapsed_s") or 0.0) / 60)
    measures: dict[str, dict[int, dict]] = {}
    for (key, seed), job in sets.items():
        if not job.done():
            continue
        manifest = json.loads((job.out / "manifest.json").read_text())
        stats = mixed_set_statistics(job.out)
        t = manifest["totals"]
        stats.update(success=t["success_rate"], mean_iters=t["mean_iters"], kept=t["kept"],
                     generated=t["generated"],
                     minutes=sum(e.get("seconds") or 0.0 for e in manifest["shards"]) / 60,
                     command=manifest["arguments"].get("command_line"))
        measures.setdefault(key, {})[seed] = stats
    res = Results(top1, minutes, measures)
    for (key, seed), job in (reruns or {}).items():
        if not job.done():
            continue
        if job.is_set:
            first = sets.get((key, seed))
            if first is not None and first.done():
                same = _shard_digests(job.out) == _shard_digests(first.out)
                res.rerun_sets.setdefault(key, {})[seed] = same
        else:
            res.rerun_top1.setdefault(key, {})[seed] = float(end_record(job.out)["test_top1"])
    return res


