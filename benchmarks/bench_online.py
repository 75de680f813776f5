"""Online mixing in a training loop: one training step with each mixer, relative to the same
step without mixing, side by side in one run.

Run: .venv/bin/python -m pytest benchmarks/bench_online.py --benchmark-only -q -s

Two loops, each on one batch of 128 Fashion-MNIST test images (the shipped ResNet-20 teacher,
a ResNet-8 student, SGD), the mixer replacing the batch as timm's ``Mixup`` and torchvision's
``v2.MixUp``/``v2.CutMix`` do:

- CE step: ``x, y = mixer(x, y)``, the student's forward and backward with soft-target CE, an
  SGD step. Baseline: the same step on the unmixed batch (hard labels).
- KD step: the teacher's logits on the batch the student sees, the student's forward and
  backward with 0.1 CE + 0.9 KD (T = 4), an SGD step. Baseline: the same on the unmixed batch.
  A KD step with SuperMix makes no teacher pass of its own: the solver has the teacher's
  output on the returned mixes already (its final iterate), so the step uses those.

Mixers: this package's MixUp, CutMix and SuperMix (the default solver and newton_sp, max_iters
20 and 50, prob 1 and 0.5 per batch), timm's ``Mixup`` (mixup and cutmix modes) and
torchvision's ``v2.MixUp``/``v2.CutMix``. Reported per case: the step's median and minimum time,
its ratio to its loop's baseline (by minimum and by median, measured in this run), and, for
SuperMix, the teacher passes it made per image (forward + backward samples / batch: a count no
load disturbs, and what its cost follows) and the share of mixed samples that met the
termination criterion.
SUPERMIX_BENCH_ONLINE_ROUNDS (default 5) sets the timed rounds per case; SUPERMIX_DATA_ROOT the
Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist; a GPU machine has none: carry
the t10k files there).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from benchutil import ONLINE_ROWS
from supermix import CutMix, MixUp, SuperMix, data, models, soft_target_cross_entropy
from supermix.teachers import default_teacher_path, load_teacher

BATCH = 128
ROUNDS = int(os.environ.get("SUPERMIX_BENCH_ONLINE_ROUNDS", "5"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

_STATE: dict = {}


class TeacherWork:
    """Counts the teacher's forward and backward samples (module hooks)."""

    def __init__(self, teacher: torch.nn.Module):
        self.forward = self.backward = 0
        teacher.register_forward_hook(self._on_forward)
        teacher.register_full_backward_hook(self._on_backward)

    def _on_forward(self, module, inputs, output):
        self.forward += inputs[0].shape[0]

    def _on_backward(self, module, grad_inputs, grad_outputs):
        self.backward += grad_outputs[0].shape[0]

    def total(self) -> int:
        return self.forward + self.backward


def _state():
    if not _STATE:
        path = default_teacher_path()
        if not path.exists():
            pytest.skip(f"the shipped teacher {path} is missing")
        try:
            x, y = data.load_tensors("fashion-mnist", train=False, limit=BATCH,
                                     root=os.environ.get("SUPERMIX_DATA_ROOT"))
        except Exception as e:  # noqa: BLE001 - a GPU machine without the data package
            pytest.skip(f"Fashion-MNIST not found ({e}); set SUPERMIX_DATA_ROOT to its folder")
        teacher = load_teacher(path).to(DEVICE).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        _STATE.update(x=x.to(DEVICE), y=y.to(DEVICE), teacher=teacher, work=TeacherWork(teacher))
    return _STATE


def _student():
    torch.manual_seed(0)
    student = models.create("resnet8", num_classes=10, in_channels=1).to(DEVICE)
    return student, torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)


def _kd(student_logits, teacher_logits, targets, T=4.0):
    kd = F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1),
                  reduction="batchmean") * T * T
    return 0.1 * soft_target_cross_entropy(student_logits, targets) + 0.9 * kd


def _mixers(teacher) -> dict:
    """name -> (make a mixer, is it SuperMix)."""
    import timm.data
    from torchvision.transforms import v2

    gen = torch.Generator(device=DEVICE)
    out = {
        "MixUp": (lambda: MixUp(num_classes=10, alpha=1.0, generator=gen.manual_seed(1)), False),
        "CutMix": (lambda: CutMix(num_classes=10, alpha=1.0, generator=gen.manual_seed(1)), False),
        "timm Mixup (mixup)": (lambda: timm.data.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0,
                                                       num_classes=10), False),
        "timm Mixup (cutmix)": (lambda: timm.data.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0,
                                                        num_classes=10), False),
        "torchvision v2.MixUp": (lambda: v2.MixUp(num_classes=10), False),
        "torchvision v2.CutMix": (lambda: v2.CutMix(num_classes=10), False),
    }
    for method in ("margin_gd", "newton_sp"):
        for max_iters, prob in ((20, 1.0), (50, 1.0), (20, 0.5)):
            name = f"SuperMix {method} max_iters {max_iters} prob {prob:g}"
            out[name] = ((lambda m=method, i=max_iters, p=prob: SuperMix(
                teacher, method=m, max_iters=i, prob=p, generator=gen.manual_seed(1))), True)
    return out


CASES = ["none"] + [
    "MixUp", "CutMix", "timm Mixup (mixup)", "timm Mixup (cutmix)", "torchvision v2.MixUp",
    "torchvision v2.CutMix",
    *(f"SuperMix {m} max_iters {i} prob {p}" for m in ("margin_gd", "newton_sp")
      for i, p in ((20, "1"), (50, "1"), (20, "0.5")))]


def _measure(benchmark, loop: str, case: str):
    state = _state()
    x, y, teacher, work = state["x"], state["y"], state["teacher"], state["work"]
    student, opt = _student()
    mixer, solves = (None, False) if case == "none" else _mixers(teacher)[case]
    mixer = mixer() if mixer is not None else None
    record = {"steps": 0, "work": 0, "mixed": 0, "met": 0}

    def step():
        before = work.total()
        if mixer is None:
            xb, targets = x, F.one_hot(y, 10).float()
        else:
            xb, targets = mixer(x, y)  # timm's and torchvision's return (x, soft targets) too
        if loop == "kd":
            result = getattr(mixer, "last_result", None) if solves else None
            if result is not None and len(result) == xb.shape[0]:
                t_logits = result.teacher_logits()  # the solver's final teacher pass
            else:
                with torch.no_grad():
                    t_logits = teacher(xb).float()
        out = student(xb)
        loss = (_kd(out, t_logits, targets) if loop == "kd"
                else soft_target_cross_entropy(out, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        record["steps"] += 1
        record["work"] += work.total() - before
        if solves and mixer.last_result is not None:
            record["mixed"] += len(mixer.last_result)
            record["met"] += int(mixer.last_result.success.sum())

    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats
    ONLINE_ROWS.append({
        "loop": loop, "case": case, "median": stats.median, "min": stats.min, "mean": stats.mean,
        "passes_per_image": record["work"] / (record["steps"] * BATCH),
        "met": record["met"] / record["mixed"] if record["mixed"] else None,
    })


@pytest.mark.parametrize("case", CASES)
def test_ce_step(benchmark, case):
    benchmark.group = "online CE step"
    _measure(benchmark, "ce", case)


KD_CASES = ["none", "MixUp", "CutMix", "timm Mixup (cutmix)", "torchvision v2.CutMix",
            "SuperMix margin_gd max_iters 20 prob 1", "SuperMix newton_sp max_iters 20 prob 1"]


@pytest.mark.parametrize("case", KD_CASES)
def test_kd_step(benchmark, case):
    benchmark.group = "online KD step"
    _measure(benchmark, "kd", case)


def print_online_table(write) -> None:
    """The cases by loop, each against its loop's baseline ("none") of this run."""
    if not ONLINE_ROWS:
        return
    write("")
    write(f"online mixing on {DEVICE.type}, batch {BATCH}, {ROUNDS} rounds per case "
          "(ratios: this run's baseline step of the same loop)")
    write("(prob 0.5 mixes some steps and not others: its mean is the expected cost, its minimum "
          "an unmixed step)")
    write(f"{'loop':<5}{'mixer':<42}{'mean ms':>9}{'median ms':>10}{'min ms':>9}"
          f"{'x base (mean)':>14}{'x base (min)':>13}{'teacher passes/img':>19}{'met':>8}")
    base = {r["loop"]: r for r in ONLINE_ROWS if r["case"] == "none"}
    for r in ONLINE_ROWS:
        b = base.get(r["loop"])
        by_mean = f"{r['mean'] / b['mean']:.2f}x" if b else "-"
        by_min = f"{r['min'] / b['min']:.2f}x" if b else "-"
        met = f"{100 * r['met']:.1f}%" if r["met"] is not None else ""
        write(f"{r['loop']:<5}{r['case']:<42}{1e3 * r['mean']:>9.1f}{1e3 * r['median']:>10.1f}"
              f"{1e3 * r['min']:>9.1f}{by_mean:>14}{by_min:>13}{r['passes_per_image']:>19.2f}"
              f"{met:>8}")
