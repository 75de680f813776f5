"""Collects each benchmark's median and prints speed ratios (ours vs reference) at the end."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")
# SUPERMIX_BENCH_THREADS=1 gives steadier numbers while other jobs share the cores.
torch.set_num_threads(int(os.environ.get("SUPERMIX_BENCH_THREADS", min(2, os.cpu_count() or 1))))

from benchutil import COMPARISON_ROWS, ONLINE_ROWS, RATIOS, RESULTS, SOLVER_ROWS  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    if ONLINE_ROWS:
        from bench_online import print_online_table

        print_online_table(write)
    if SOLVER_ROWS or COMPARISON_ROWS:
        from bench_solver import print_solver_table

        print_solver_table(write)
    if not RESULTS:
        return
    write("")
    write("supermix benchmark summary (ratios measured side by side in this run; targets are judged on")
    write("the ratio of minimum times, which other jobs on a shared machine disturb least)")
    write(f"{'group':<34}{'provider':<12}{'median ms':>12}{'min ms':>10}{'saved MB':>10}")
    for (group, provider), row in sorted(RESULTS.items()):
        saved = row.get("saved_mb")
        saved_txt = f"{saved:10.2f}" if saved is not None else f"{'':>10}"
        write(f"{group:<34}{provider:<12}{row['median'] * 1e3:12.3f}{row['min'] * 1e3:10.3f}{saved_txt}")
    write("")
    for group, ours, base, target in RATIOS:
        if (group, ours) in RESULTS and (group, base) in RESULTS:
            by_min = RESULTS[(group, base)]["min"] / RESULTS[(group, ours)]["min"]
            by_median = RESULTS[(group, base)]["median"] / RESULTS[(group, ours)]["median"]
            verdict = "" if target is None else ("  (target >= %.0fx: %s)" % (target, "met" if by_min >= target else "MISSED"))
            write(f"ratio {group}: {base}/{ours} = {by_min:.2f}x by min, {by_median:.2f}x by median{verdict}")
