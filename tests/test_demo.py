"""``supermix demo`` and the figure code in ``supermix.viz``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from supermix.commands import cli
from supermix.commands.demo import run_demo
from supermix.teachers import default_teacher_path
from supermix.viz import MixRow, render_rows, topk_lines

from testing import subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_with_shipped_teacher(tmp_path):
    """``supermix demo`` as a user runs it: no arguments but where to write the picture."""
    override = os.environ.get("SUPERMIX_TEST_TEACHER")  # another trained teacher to test with
    if not override and not default_teacher_path().is_file():
        pytest.skip(f"the shipped teacher {default_teacher_path()} has not been trained yet")
    out = tmp_path / "demo.png"
    extra = ["--teacher", override] if override else []
    proc = subprocess.run([sys.executable, "-m", "supermix", "demo", "--out", str(out), *extra],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    text = proc.stdout
    assert re.search(r"backend (cpp|reference|triton)", text), text
    rows = {}
    for name in ("SuperMix", "MixUp", "CutMix"):
        match = re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)$", text, re.M)
        assert match, f"no figures for {name} in:\n{text}"
        rows[name] = tuple(float(v) for v in match.groups())
    iters, success, speed = rows["SuperMix"]
    assert 0 <= iters <= 50 and speed > 0
    # The paper's claim in miniature: the teacher sees all sources in SuperMix images far more
    # often than in blind mixes.
    assert success >= 50.0, text
    assert success > rows["MixUp"][1] + 20 and success > rows["CutMix"][1] + 20, text


def test_run_demo_figures(tmp_path, tiny_teacher):
    lines: list[str] = []
    figures = run_demo(out=str(tmp_path / "d.png"), teacher=str(tiny_teacher), batch_size=12,
                       rows=2, device="cpu", print_fn=lines.append)
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC
    assert set(figures["mixers"]) == {"supermix", "mixup", "cutmix"}
    for f in figures["mixers"].values():
        assert 0.0 <= f["success_rate"] <= 1.0 and f["images_per_s"] > 0 and f["mean_iters"] >= 0
    assert figures["backend"] in ("cpp", "reference", "triton")
    printed = "\n".join(lines)
    assert "images/s" in printed and f"backend {figures['backend']}" in printed


def test_demo_bad_teacher_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["demo", "--teacher", str(tmp_path / "none.pt"),
                     "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("supermix: error: --teacher: no file at") and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_render_rows_without_sources_or_masks(tmp_path):
    rows = [MixRow(group="a", mixed=torch.rand(3, 10, 12), lines=["x"]),
            MixRow(group="b", mixed=torch.rand(1, 10, 12), sources=[torch.rand(1, 10, 12)] * 2,
                   masks=[torch.rand(10, 12)] * 2, source_titles=["s0", "s1"])]
    path = render_rows(rows, tmp_path / "sub" / "grid.png", title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "sub").glob(".*.tmp"))


def test_topk_lines_names_and_order():
    probs = torch.tensor([0.1, 0.6, 0.3])
    assert topk_lines(probs, ["a", "b", "c"], 2) == ["b 0.60", "c 0.30"]
