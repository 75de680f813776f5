"""Results shared between the benchmark modules and the summary printed by conftest."""
from __future__ import annotations

# {(group, provider): {"median": seconds, "min": seconds, "saved_mb": float | None}}
RESULTS: dict[tuple[str, str], dict] = {}
# [(group, ours, baseline, target or None)]
RATIOS: list[tuple[str, str, str, float | None]] = []


def record(benchmark, group: str, provider: str, **extra) -> None:
    RESULTS[(group, provider)] = {"median": benchmark.stats.stats.median, "min": benchmark.stats.stats.min, **extra}

# Rows of the solver table (paper Table 4 on this machine), printed by conftest.
SOLVER_ROWS: list[dict] = []
# Rows of the margin_gd vs tuned-SGD comparison (every teacher and setting), printed by conftest.
COMPARISON_ROWS: list[dict] = []
# Rows of the online-mixing table (bench_online.py), printed by conftest.
ONLINE_ROWS: list[dict] = []
