"""The mask solvers side by side: the paper's Table 4 and margin_gd against a tuned SGD.

Run: .venv/bin/python -m pytest benchmarks/bench_solver.py --benchmark-only -q -s

Two benchmarks, each on batches of 128 real Fashion-MNIST test images, max_iters=50, the same
batches and seeds for every method:

- ``test_table4_*``: the paper's Table 4 on the shipped teacher: sgd at the paper's lr 0.1 and a
  learning-rate sweep, newton (eq. 6) and newton_sp (eq. 7), plus newton_sp's overhead (its wall
  time over the teacher's own forward+backward on exactly the samples it processed).
- ``test_margin_gd_vs_tuned_sgd``: for every teacher (the shipped ResNet-20 and the WRN-16-2
  and MobileNetV2 test teachers in tests/assets/) and every setting (k=2 and k=3 with 8x8
  masks, k=2 with 4x4 masks): margin_gd with its one fixed set of settings, newton_sp, and sgd at
  every rate of {1, 3, 10, 30, 100}, the best rate chosen per teacher and setting by teacher
  samples per successful image. All methods solve each batch in turn, side by side. Reported per method: mean iterations, success, ms per successful image,
  teacher samples processed (forward + backward) per successful image (a count, immune to a
  loaded machine), the mean final KL(target || teacher) and the mean sparsity L_s (eq. 5) of
  the returned masks, so that speed bought with worse masks shows.

Before any speed is printed every result is checked: its success flags are recomputed from the
teacher's own output on the returned images with a rule written here, not the solver's.
SUPERMIX_BENCH_BATCHES (default 3) sets the number of batches; SUPERMIX_BENCH_TEACHERS
(comma-separated names) picks teachers.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import supermix
from benchutil import COMPARISON_ROWS, SOLVER_ROWS
from supermix import data
from supermix.teachers import default_teacher_path, load_teacher

NUM_BATCHES = int(os.environ.get("SUPERMIX_BENCH_BATCHES", "3"))
BATCH = 128
MAX_ITERS = 50
TABLE4_SGD_SWEEP = (1.0, 3.0, 10.0, 30.0)
SGD_SWEEP = (1.0, 3.0, 10.0, 30.0, 100.0)
ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
# name -> (checkpoint, Fashion-MNIST shown as 3x32x32)
TEACHERS = {
    "resnet20": (None, False),
    "wrn_16_2": (ASSETS / "teacher_wrn16_2_fmnist.pt", False),
    "mobilenetv2": (ASSETS / "teacher_mobilenetv2_fmnist32.pt", True),
}
# (k, mask_size)
SETTINGS = ((2, 8), (3, 8), (2, 4))


def _selected_teachers() -> list[str]:
    chosen = os.environ.get("SUPERMIX_BENCH_TEACHERS")
    return [t for t in TEACHERS if not chosen or t in chosen.split(",")]


_CACHE: dict = {}


def _teacher_and_batches(name: str):
    if name not in _CACHE:
        path, as_cifar = TEACHERS[name]
        path = path or default_teacher_path()
        if not Path(path).exists():
            pytest.skip(f"teacher {path} is missing")
        images, _ = data.load_tensors("fashion-mnist", train=False, as_cifar=as_cifar)
        teacher = load_teacher(path)
        # Warm up (thread pool, allocator, kernels) so the first method timed pays no start-up cost.
        for method in ("margin_gd", "sgd"):
            supermix.solve(teacher, images[-BATCH:], method=method, max_iters=3,
                           generator=torch.Generator().manual_seed(0))
        _CACHE[name] = (teacher, [images[i * BATCH:(i + 1) * BATCH] for i in range(NUM_BATCHES)])
    return _CACHE[name]


def confirm_success(teacher, x: torch.Tensor, result) -> None:
    """Assert that ``result.success`` is what the teacher says of the returned images.

    Independent of ``supermix.solver.is_success``: per sample, the set of the teacher's top-u
    classes on the mixed image must equal the set of the sources' u distinct labels.
    """
    with torch.no_grad():
        labels = teacher(x).argmax(dim=1)
        probs = F.softmax(teacher(result.mixed).float(), dim=1)
    for b in range(len(result)):
        wanted = {int(c) for c in labels[result.sources[b]]}
        top = {int(c) for c in probs[b].topk(len(wanted)).indices}
        assert (top == wanted) == bool(result.success[b]), f"sample {b}: success flag disagrees with the teacher"


def _final_kl(result) -> torch.Tensor:
    t, p = result.targets, result.probs.clamp_min(1e-12)
    return (t * (t.clamp_min(1e-12).log() - p.log())).sum(dim=1)


def _sparsity(result) -> torch.Tensor:
    m = result.masks()
    return (m * (1 - m)).abs().mean(dim=(1, 2, 3))


def _run_side_by_side(name: str, methods: list[tuple[str, float]], k: int = 2, mask_size: int = 8,
                      check: bool = False) -> list[dict]:
    """Solve every batch with every (method, lr), batch by batch, so that a change in the load
    of a shared machine falls on all methods alike; one row per method."""
    teacher, batches = _teacher_and_batches(name)
    seconds = [0.0] * len(methods)
    results: list[list] = [[] for _ in methods]
    for i, x in enumerate(batches):
        for j, (method, lr) in enumerate(methods):
            start = time.perf_counter()
            r = supermix.solve(teacher, x, k=k, mask_size=mask_size, method=method, lr=lr, max_iters=MAX_ITERS,
                               generator=torch.Generator().manual_seed(1000 + i))
            seconds[j] += time.perf_counter() - start
            if check:
                confirm_success(teacher, x, r)
            results[j].append(r)
    return [_row(name, method, lr, k, mask_size, seconds[j], results[j]) for j, (method, lr) in enumerate(methods)]


def _run(name: str, method: str, lr: float = 0.1, k: int = 2, mask_size: int = 8, check: bool = False) -> dict:
    return _run_side_by_side(name, [(method, lr)], k, mask_size, check)[0]


def _row(name, method, lr, k, mask_size, seconds, results) -> dict:
    success = torch.cat([r.success for r in results])
    n_ok = max(int(success.sum()), 1)
    work = sum(r.stats.forward_samples + r.stats.backward_samples for r in results)
    return {
        "teacher": name, "k": k, "mask_size": mask_size, "lr": lr,
        "method": method if method != "sgd" else f"sgd lr={lr:g}",
        "seconds_per_batch": seconds / len(results),
        "mean_iters": float(torch.cat([r.iters for r in results]).float().mean()),
        "success_rate": float(success.float().mean()),
        "ms_per_success": 1e3 * seconds / n_ok,
        "work_per_success": work / n_ok,
        "final_kl": float(torch.cat([_final_kl(r) for r in results]).mean()),
        "sparsity": float(torch.cat([_sparsity(r) for r in results]).mean()),
        "results": results, "seconds": seconds,
    }


# ------------------------------------------------------------------------- paper Table 4 ----
def _teacher_replay_seconds(results) -> float:
    """Time of the teacher's own work on the batch sizes the solver used."""
    teacher, batches = _teacher_and_batches("resnet20")
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
def test_table4_method(benchmark, method):
    holder = {}
    benchmark.group = "solver"
    benchmark.pedantic(lambda: holder.update(row=_run("resnet20", method, check=True)), rounds=1, iterations=1)
    row = holder["row"]
    if method == "newton_sp":
        row["teacher_seconds"] = _teacher_replay_seconds(row["results"])
        row["overhead"] = row["seconds"] / row["teacher_seconds"]
    SOLVER_ROWS.append(row)


def test_table4_sgd_sweep(benchmark):
    benchmark.group = "solver"
    holder = {}
    benchmark.pedantic(lambda: holder.update(rows=[_run("resnet20", "sgd", lr) for lr in TABLE4_SGD_SWEEP]),
                       rounds=1, iterations=1)
    min(holder["rows"], key=lambda r: r["ms_per_success"])["best_lr"] = True
    SOLVER_ROWS.extend(holder["rows"])


# ------------------------------------------------------------ margin_gd against tuned SGD ----
@pytest.mark.parametrize("k,mask_size", SETTINGS, ids=[f"k{k}-{m}x{m}" for k, m in SETTINGS])
@pytest.mark.parametrize("teacher", list(TEACHERS))
def test_margin_gd_vs_tuned_sgd(benchmark, teacher, k, mask_size):
    if teacher not in _selected_teachers():
        pytest.skip("not in SUPERMIX_BENCH_TEACHERS")
    benchmark.group = "solver comparison"
    holder = {}

    def run_all():
        methods = [("margin_gd", 0.1), ("newton_sp", 0.1)] + [("sgd", lr) for lr in SGD_SWEEP]
        holder["rows"] = _run_side_by_side(teacher, methods, k, mask_size, check=True)

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    rows = holder["rows"]
    sgd = [r for r in rows if r["method"].startswith("sgd")]
    # The best rate is chosen by teacher samples per success: a count, so the choice does not
    # depend on the load of a shared machine; on a quiet one time follows it (one teacher
    # forward and backward dominate every iteration of every method).
    best = min(sgd, key=lambda r: r["work_per_success"])
    best["best_lr"] = True
    ours = rows[0]
    ours["time_vs_best_sgd"] = ours["ms_per_success"] / best["ms_per_success"]
    ours["work_vs_best_sgd"] = ours["work_per_success"] / best["work_per_success"]
    ours["success_vs_best_sgd"] = ours["success_rate"] - best["success_rate"]
    ours["meets_target"] = (ours["time_vs_best_sgd"] <= 0.8 and ours["work_vs_best_sgd"] <= 0.8
                            and ours["success_vs_best_sgd"] >= -0.005)
    COMPARISON_ROWS.extend(rows)


# ------------------------------------------------------------------------------ printing ----
def _row_text(r: dict, tag: str = "") -> str:
    return (f"| {r['method']}{tag} | {r['mean_iters']:.2f} | {r['success_rate']:.1%} | {r['ms_per_success']:.2f} | "
            f"{r['work_per_success']:.1f} | {r['final_kl']:.3f} | {r['sparsity']:.3f} |")


def print_solver_table(write) -> None:
    threads = torch.get_num_threads()
    if SOLVER_ROWS:
        _print_table4(write, threads)
    if COMPARISON_ROWS:
        _print_comparison(write, threads)


def _print_table4(write, threads: int) -> None:
    rows = {r["method"]: r for r in SOLVER_ROWS}
    write("")
    write(f"Paper Table 4 on the shipped teacher: {NUM_BATCHES} batches x {BATCH} Fashion-MNIST test images, "
          f"max_iters={MAX_ITERS}, {threads} threads")
    write("| method | mean iters | success | ms / successful image | teacher samples / success | final KL | sparsity |")
    write("|---|---:|---:|---:|---:|---:|---:|")
    for r in SOLVER_ROWS:
        write(_row_text(r, " (best of sweep)" if r.get("best_lr") else ""))
    sp = rows.get("newton_sp")
    if not sp:
        return
    paper_sgd = rows.get("sgd lr=0.1")
    if paper_sgd:
        write(f"sgd(lr 0.1)/newton_sp time per successful image: {paper_sgd['ms_per_success'] / sp['ms_per_success']:.1f}x")
    if "newton" in rows:
        write(f"newton/newton_sp time per successful image: {rows['newton']['ms_per_success'] / sp['ms_per_success']:.1f}x")
    if "overhead" in sp:
        write(f"newton_sp overhead: {sp['seconds']:.2f} s solver / {sp['teacher_seconds']:.2f} s teacher fwd+bwd "
              f"= {sp['overhead']:.2f}x")


def _print_comparison(write, threads: int) -> None:
    write("")
    write(f"margin_gd against the best SGD rate of {{1, 3, 10, 30, 100}} per teacher and setting: "
          f"{NUM_BATCHES} batches x {BATCH} images, max_iters={MAX_ITERS}, {threads} threads")
    write("| teacher | k | mask | method | mean iters | success | ms / successful image | teacher samples / success "
          "| final KL | sparsity |")
    write("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in COMPARISON_ROWS:
        if r["method"].startswith("sgd") and not r.get("best_lr"):
            continue
        tag = " (best of sweep)" if r.get("best_lr") else ""
        write(f"| {r['teacher']} | {r['k']} | {r['mask_size']}x{r['mask_size']} " + _row_text(r, tag))
    write("")
    write("SGD sweep, teacher samples per success (success rate) at lr " + ", ".join(f"{lr:g}" for lr in SGD_SWEEP) + ":")
    for r in COMPARISON_ROWS:
        if r["method"] == "margin_gd":
            sweep = [s for s in COMPARISON_ROWS if s["teacher"] == r["teacher"] and s["k"] == r["k"]
                     and s["mask_size"] == r["mask_size"] and s["method"].startswith("sgd")]
            write(f"  {r['teacher']:<12} k={r['k']} {r['mask_size']}x{r['mask_size']}: "
                  + ", ".join(f"{s['work_per_success']:.1f} ({s['success_rate']:.0%})" for s in sweep))
    write("")
    write("margin_gd / best SGD (target: time and teacher samples <= 0.8x, success >= best SGD - 0.5 points):")
    for r in COMPARISON_ROWS:
        if "time_vs_best_sgd" in r:
            write(f"  {r['teacher']:<12} k={r['k']} {r['mask_size']}x{r['mask_size']}: time {r['time_vs_best_sgd']:.2f}x, "
                  f"teacher samples {r['work_vs_best_sgd']:.2f}x, success {100 * r['success_vs_best_sgd']:+.1f} points: "
                  f"{'met' if r['meets_target'] else 'MISSED'}")
