"""The paper's Table 4 on this machine: sgd, newton and newton_sp on the shipped teacher.

Run: .venv/bin/python -m pytest benchmarks/bench_solver.py --benchmark-only -q -s
Several batches of 128 real Fashion-MNIST test images, max_iters=50, the same batches and seeds
for every method. Reported per method: wall time per batch, mean iterations, success rate and
time per successful mixed image; sgd at the paper's lr 0.1 and at the best lr of a sweep (a fair
baseline is a tuned one); the ratios of time per successful image against newton_sp; and
newton_sp's overhead: its wall time over the teacher's own forward+backward time on exactly the
samples the solver processed (replayed with the same batch sizes).
"""
from __future__ import annotations

import os
import time

import pytest
import torch

import supermix
from benchutil import SOLVER_ROWS
from supermix import data
from supermix.checkpoint import default_teacher_path, load_teacher

NUM_BATCHES = int(os.environ.get("SUPERMIX_BENCH_BATCHES", "4"))
BATCH = 128
MAX_ITERS = 50
SGD_SWEEP = (1.0, 3.0, 10.0, 30.0)


def _setup():
    path = default_teacher_path()
    if not path.exists():
        pytest.skip(f"the shipped teacher {path} is missing")
    teacher = load_teacher(path)
    images, _ = data.load_tensors("fashion-mnist", train=False)
    return teacher, [images[i * BATCH:(i + 1) * BATCH] for i in range(NUM_BATCHES)]


TEACHER, BATCHES = None, None


def _batches():
    global TEACHER, BATCHES
    if TEACHER is None:
        TEACHER, BATCHES = _setup()
    return TEACHER, BATCHES


def _run_method(method: str, lr: float = 0.1) -> dict:
    teacher, batches = _batches()
    seconds, results = 0.0, []
    for i, x in enumerate(batches):
        start = time.perf_counter()
        r = supermix.solve(teacher, x, method=method, lr=lr, max_iters=MAX_ITERS,
                           generator=torch.Generator().manual_seed(1000 + i))
        seconds += time.perf_counter() - start
        results.append(r)
    success = torch.cat([r.success for r in results])
    iters = torch.cat([r.iters for r in results]).float()
    n_ok = int(success.sum())
    return {
        "method": method if method != "sgd" else f"sgd lr={lr:g}",
        "seconds_per_batch": seconds / len(batches),
        "mean_iters": float(iters.mean()),
        "success_rate": float(success.float().mean()),
        "ms_per_success": 1e3 * seconds / max(n_ok, 1),
        "results": results,
        "seconds": seconds,
    }


def _teacher_replay_seconds(results) -> float:
    """Time of the teacher's own work on the batch sizes the solver used."""
    teacher, batches = _batches()
    x = batches[0]
    total = 0.0
    for r in results:
        iters = r.iters
        sizes = [int((iters >= t).sum()) for t in range(int(iters.max()) + 1)]
        start = time.perf_counter()
        with torch.no_grad():
            teacher(x)  # the label forward
        for t, n in enumerate(sizes):
            inp = x[:n].clone().requires_grad_(True)
            out = torch.log_softmax(teacher(inp), dim=1)
            if t < len(sizes) - 1:  # the last forward is a check only
                torch.autograd.grad(out[:, 0].sum(), [inp])
        total += time.perf_counter() - start
    return total


@pytest.mark.parametrize("method", ["newton_sp", "newton", "sgd"])
def test_solver_method(benchmark, method):
    holder = {}
    benchmark.group = "solver"
    benchmark.pedantic(lambda: holder.update(row=_run_method(method)), rounds=1, iterations=1)
    row = holder["row"]
    if method == "newton_sp":
        row["teacher_seconds"] = _teacher_replay_seconds(row["results"])
        row["overhead"] = row["seconds"] / row["teacher_seconds"]
    SOLVER_ROWS.append(row)


def test_solver_sgd_sweep(benchmark):
    benchmark.group = "solver"
    holder = {}

    def sweep():
        holder["rows"] = [_run_method("sgd", lr) for lr in SGD_SWEEP]

    benchmark.pedantic(sweep, rounds=1, iterations=1)
    best = min(holder["rows"], key=lambda r: r["ms_per_success"])
    for row in holder["rows"]:
        row["swept"] = True
    best["best_lr"] = True
    SOLVER_ROWS.extend(holder["rows"])


def print_solver_table(write) -> None:
    rows = {r["method"]: r for r in SOLVER_ROWS}
    write("")
    write(f"Solver on the shipped teacher: {NUM_BATCHES} batches x {BATCH} Fashion-MNIST test images, "
          f"max_iters={MAX_ITERS}, {torch.get_num_threads()} threads")
    write("| method | s / batch | mean iters | success | ms / successful image |")
    write("|---|---:|---:|---:|---:|")
    for r in SOLVER_ROWS:
        tag = " (best of sweep)" if r.get("best_lr") else ""
        write(f"| {r['method']}{tag} | {r['seconds_per_batch']:.2f} | {r['mean_iters']:.2f} | "
              f"{r['success_rate']:.1%} | {r['ms_per_success']:.2f} |")
    sp = rows.get("newton_sp")
    if not sp:
        return
    write("")
    paper_sgd = rows.get("sgd lr=0.1")
    if paper_sgd:
        ratio = paper_sgd["ms_per_success"] / sp["ms_per_success"]
        write(f"sgd(lr 0.1)/newton_sp time per successful image: {ratio:.1f}x (target >= 5x: "
              f"{'met' if ratio >= 5 else 'MISSED'})")
    best = [r for r in SOLVER_ROWS if r.get("best_lr")]
    if best:
        write(f"tuned {best[0]['method']}/newton_sp time per successful image: "
              f"{best[0]['ms_per_success'] / sp['ms_per_success']:.1f}x")
    if "newton" in rows:
        write(f"newton/newton_sp time per successful image: {rows['newton']['ms_per_success'] / sp['ms_per_success']:.1f}x")
    write(f"newton_sp success rate: {sp['success_rate']:.1%} (target >= 75%: "
          f"{'met' if sp['success_rate'] >= 0.75 else 'MISSED'})")
    if "overhead" in sp:
        write(f"newton_sp overhead: {sp['seconds']:.2f} s solver / {sp['teacher_seconds']:.2f} s teacher fwd+bwd "
              f"= {sp['overhead']:.2f}x (target <= 1.3x: {'met' if sp['overhead'] <= 1.3 else 'MISSED'})")
