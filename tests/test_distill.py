"""``supermix distill``: the objectives against hand-computed values, the schedule, exact resume,
torchrun (2 CPU processes) against one process, one-line errors, and the --quick replication."""
from __future__ import annotations

import concurrent.futures
import json
import math
import subprocess
import sys

import pytest
import torch

from supermix import training as tr
from supermix.commands.args import add_schedule_arguments, resolve_schedule_flags
from supermix.runtime import make_generator
from supermix.training.objectives import (DistillWeights, ce_loss, ce_to_teacher_top1,
                                          distill_objective, kd_loss)
from testing import (ROOT, TINY, assert_one_line_error, assert_same_step, epochs, make_generated,
                     make_teacher, max_abs_diff, read_log, run_cli, run_main, run_torchrun,
                     state_dict, subprocess_env, without_timing)

LN3 = math.log(3.0)


# ------------------------------------------------------------------------------ objectives ---
def test_kd_loss_hand_values():
    # p = softmax([ln 3, 0]) = (3/4, 1/4), q = softmax([0, 0]) = (1/2, 1/2):
    # KL(p || q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s = torch.tensor([[0.0, 0.0]])
    assert kd_loss(s, torch.tensor([[LN3, 0.0]]), T=1.0).item() == pytest.approx(kl, rel=1e-6)
    # T = 2: teacher logits [2 ln 3, 0] / 2 give the same p; the T^2 factor multiplies by 4.
    assert kd_loss(s, torch.tensor([[2 * LN3, 0.0]]), T=2.0).item() == pytest.approx(4 * kl,
                                                                                      rel=1e-6)
    # batchmean: a second row identical to its teacher (KL 0) halves the mean.
    s2 = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t2 = torch.tensor([[LN3, 0.0], [1.0, -1.0]])
    assert kd_loss(s2, t2, T=1.0).item() == pytest.approx(kl / 2, rel=1e-6)


def test_kd_loss_gradient_is_T_times_q_minus_p_over_B():
    torch.manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64)
    T = 3.0
    kd_loss(s, t, T).backward()
    q = torch.softmax(s.detach().float() / T, 1)
    p = torch.softmax(t.float() / T, 1)
    expected = T * (q - p) / 5
    torch.testing.assert_close(s.grad.float(), expected, atol=1e-6, rtol=1e-5)


def test_ce_terms_hand_values():
    s = torch.tensor([[LN3, 0.0], [0.0, LN3]])        # softmax rows (3/4, 1/4), (1/4, 3/4)
    labels = torch.tensor([0, 0])                      # -ln(3/4), -ln(1/4)
    assert ce_loss(s, labels).item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    # The teacher's top class is 1 on both rows whatever its confidence.
    t = torch.tensor([[-5.0, 5.0], [0.1, 0.2]])
    assert ce_to_teacher_top1(s, t).item() == pytest.approx(
        (-math.log(0.25) - math.log(0.75)) / 2, rel=1e-6)


def test_distill_objective_weights_and_skipped_terms():
    torch.manual_seed(1)
    s, t, sm, tm = (torch.randn(4, 3) for _ in range(4))
    y = torch.tensor([0, 1, 2, 0])
    w = DistillWeights(ce=0.1, kd=0.9, mixed_ce=0.5, mixed_kd=0.25, T=4.0)
    total, parts = distill_objective(w, s, y, t, sm, tm)
    expected = {"ce": ce_loss(s, y), "kd": kd_loss(s, t, 4.0),
                "mixed_ce": ce_to_teacher_top1(sm, tm), "mixed_kd": kd_loss(sm, tm, 4.0)}
    assert set(parts) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value)
    torch.testing.assert_close(total, 0.1 * expected["ce"] + 0.9 * expected["kd"]
                               + 0.5 * expected["mixed_ce"] + 0.25 * expected["mixed_kd"])
    # Weight 0: not computed, so its inputs may be missing.
    total, parts = distill_objective(DistillWeights(ce=1.0), s, y)
    assert list(parts) == ["ce"]
    torch.testing.assert_close(total, expected["ce"])


# -------------------------------------------------------------------------------- schedule ---
def test_epochs_scale_with_one_over_kappa():
    # The paper's example: kappa = 5 turns 600 epochs into 120 (decays 200..500 -> 40..100).
    assert tr.scale_schedule(600, [200, 300, 400, 500], 50_000, 250_000) == (120, [40, 60, 80,
                                                                                  100])
    assert tr.scale_schedule(600, [200], 50_000, 250_000, scale=False) == (600, [200])
    assert tr.scale_schedule(30, [10, 20], 1000, 1000) == (30, [10, 20])
    assert [tr.step_lr(0.1, e, [2, 4], 0.1) for e in range(6)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_presets_fill_only_unset_flags():
    import argparse

    p = argparse.ArgumentParser()
    add_schedule_arguments(p)
    args = p.parse_args(["--preset", "cifar100", "--lr", "0.05"])
    resolve_schedule_flags(args)
    assert (args.batch_size, args.epochs, args.lr_decay_epochs, args.lr, args.wd) == (
        128, 600, [200, 300, 400, 500], 0.05, 5e-4)
    args = p.parse_args(["--epochs", "12"])
    resolve_schedule_flags(args)
    assert args.lr_decay_epochs == [4, 6, 8, 10]      # 1/3, 1/2, 2/3, 5/6 of the run
    assert tr.SCHEDULE_PRESETS["imagenet"]["batch_size"] == 256


def test_ranks_share_the_global_batch_and_its_augmentation():
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    bank = tr.ImageBank(images, [0.5], [0.25], padding=2, flip=True)
    labels = torch.arange(40)
    single = list(tr.bank_stream(bank, labels, tr.EpochPlan(40, 8, 7, 3), lambda s: s,
                                 make_generator(7, "aug", 3), "cpu", torch.contiguous_format))
    ranks = [list(tr.bank_stream(bank, labels, tr.EpochPlan(40, 8, 7, 3, world=2, rank=r),
                                 lambda s: s, make_generator(7, "aug", 3), "cpu",
                                 torch.contiguous_format)) for r in range(2)]
    assert len(single) == 5
    for step, (x, y) in enumerate(single):
        (x0, y0), (x1, y1) = ranks[0][step], ranks[1][step]
        torch.testing.assert_close(torch.cat([x0, x1]), torch.cat([x[0::2], x[1::2]]))
        assert torch.equal(torch.cat([y0, y1]), torch.cat([y[0::2], y[1::2]]))
    seen = torch.cat([y for _, y in single])
    assert seen.unique().numel() == 40                 # a permutation: every slot once


# ----------------------------------------------------------------------------- CLI runs ------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = make_teacher(root / "teacher.pt")
    return {"root": root, "teacher": teacher,
            "mixed": make_generated(root / "mixup", teacher, size=160, mixer="mixup")}


def _distill(assets, out, *extra):
    return ["distill", "--teacher", str(assets["teacher"]), *TINY, "--out", str(out), *extra]


def test_resume_continues_bit_exactly(assets, tmp_path):
    common = ["--mixed", str(assets["mixed"]), "--w-kd", "0.9", "--w-mixed-kd", "0.5",
              "--epochs", "3", "--lr-decay-epochs", "2"]
    assert run_main(_distill(assets, tmp_path / "a", *common)) == 0
    assert run_main(_distill(assets, tmp_path / "b", *common, "--stop-after", "1")) == 0
    assert not (tmp_path / "b" / "model.pt").exists()
    assert run_main(_distill(assets, tmp_path / "b", *common, "--stop-after", "1",
                             "--resume")) == 0
    assert run_main(_distill(assets, tmp_path / "b", *common, "--resume")) == 0
    worst, where = max_abs_diff(state_dict(tmp_path / "a" / "model.pt"),
                                state_dict(tmp_path / "b" / "model.pt"))
    assert worst == 0.0, f"resumed weights differ by {worst} at {where}"
    assert without_timing(epochs(tmp_path / "a")) == without_timing(epochs(tmp_path / "b"))
    log = read_log(tmp_path / "b")
    assert [r["event"] for r in log] == ["start", "epoch", "resume", "epoch", "resume", "epoch",
                                         "end"]
    first = epochs(tmp_path / "a")[0]
    assert {"loss_ce", "loss_kd", "loss_mixed_ce", "loss_mixed_kd", "test_top1",
            "test_top5"} <= set(first)
    assert [r["lr"] for r in epochs(tmp_path / "a")] == pytest.approx([0.1, 0.1, 0.01])
    # A run with another objective may not continue this one.
    other = [*common]
    other[other.index("--w-kd") + 1] = "0.5"
    assert run_main(_distill(assets, tmp_path / "b", *other, "--resume")) == 2


@pytest.mark.parametrize("mixer", ["supermix", "mixup", "cutmix"])
def test_online_mixers_train(assets, tmp_path, mixer):
    out = tmp_path / mixer
    assert run_main(_distill(assets, out, "--online", mixer, "--w-mixed-kd", "0.5",
                             "--epochs", "1", "--limit-steps", "2")) == 0
    (record,) = epochs(out)
    assert record["steps"] == 2 and record["train_images"] == 128
    assert math.isfinite(record["loss_mixed_ce"]) and math.isfinite(record["loss_mixed_kd"])


def test_online_supermix_reuses_the_solvers_teacher_passes(assets, tmp_path, monkeypatch):
    """With --online supermix the teacher runs once on the real batch (the KD term and the
    sources' labels) and the solver's probabilities on the returned mixes are the mixed terms'
    targets: no teacher pass is made twice, and the targets equal fresh teacher passes."""
    import torch.nn.functional as F

    from supermix import mixers
    from supermix.commands import distill as cmd

    samples = []
    original_load = cmd.load_teacher

    def load(*args, **kwargs):
        teacher = original_load(*args, **kwargs)
        teacher.register_forward_hook(lambda m, inputs, out: samples.append(inputs[0].shape[0]))
        return teacher

    solved = []
    original_solve = mixers.solve

    def recording_solve(teacher, images, *args, **kwargs):
        result = original_solve(teacher, images, *args, **kwargs)
        solved.append((teacher, images, kwargs["source_logits"], result))
        return result

    targets = []
    original_objective = cmd.distill_objective

    def recording_objective(w, s_real, y, t_real, s_mixed, t_mixed):
        targets.append((t_real, t_mixed))
        return original_objective(w, s_real, y, t_real, s_mixed, t_mixed)

    monkeypatch.setattr(cmd, "load_teacher", load)
    monkeypatch.setattr(mixers, "solve", recording_solve)
    monkeypatch.setattr(cmd, "distill_objective", recording_objective)
    out = tmp_path / "online"
    assert run_main(_distill(assets, out, "--online", "supermix", "--w-kd", "0.5",
                             "--w-mixed-kd", "0.5", "--max-iters", "3", "--epochs", "1",
                             "--limit-steps", "2")) == 0
    assert len(solved) == len(targets) == 2
    # Per step: the real batch once, then the solver's own passes over the mixes.
    expected = sum(images.shape[0] + result.stats.forward_samples
                   for _, images, _, result in solved)
    assert sum(samples) == expected
    with torch.no_grad():
        for (teacher, images, given, result), (t_real, t_mixed) in zip(solved, targets):
            assert result.stats.forward_samples == int((result.iters + 1).sum())
            fresh_real = teacher(images).float()
            assert torch.equal(given, t_real)
            torch.testing.assert_close(t_real, fresh_real, rtol=1e-5, atol=1e-5)
            fresh_mixed = teacher(result.mixed).float()
            torch.testing.assert_close(F.log_softmax(t_mixed, 1), F.log_softmax(fresh_mixed, 1),
                                       rtol=1e-4, atol=1e-4)


def _hand_paper_loss(s_real, y, t_real, s_mixed, t_mixed) -> float:
    """The original code's objective written out sample by sample: 1.8 CE(real, y)
    + 1.8 CE(mixed, argmax teacher(mixed)) + 0.2 * 16 * KL(softmax(t/4) || softmax(s/4))."""
    def log_softmax(row):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        return [v - log_z for v in row]

    def ce(rows, labels):
        return sum(-log_softmax(r)[c] for r, c in zip(rows, labels)) / len(rows)

    def kd(s_rows, t_rows, T=4.0):
        total = 0.0
        for s, t in zip(s_rows, t_rows):
            log_q = log_softmax([v / T for v in s])
            log_p = log_softmax([v / T for v in t])
            total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
        return T * T * total / len(s_rows)

    s_real, t_real, s_mixed, t_mixed = (v.double().tolist() for v in (s_real, t_real, s_mixed,
                                                                      t_mixed))
    hard = [max(range(len(r)), key=r.__getitem__) for r in t_mixed]
    return 1.8 * ce(s_real, y.tolist()) + 1.8 * ce(s_mixed, hard) + 0.2 * kd(s_real, t_real)


def test_recipe_paper_is_the_original_codes_objective(assets, tmp_path, monkeypatch, capsys):
    """--recipe paper: the loss of every step equals the original code's objective written by
    hand; the recipe and its weights are printed, logged and kept in the checkpoint."""
    from supermix.checkpoint import load_checkpoint
    from supermix.commands import distill as cmd

    losses = []
    original = cmd.distill_objective

    def recording(w, s_real, y, t_real, s_mixed, t_mixed):
        loss, parts = original(w, s_real, y, t_real, s_mixed, t_mixed)
        losses.append((float(loss.detach()), _hand_paper_loss(s_real.detach(), y, t_real, s_mixed.detach(),
                                                     t_mixed)))
        return loss, parts

    monkeypatch.setattr(cmd, "distill_objective", recording)
    out = tmp_path / "paper"
    assert run_main(_distill(assets, out, "--recipe", "paper", "--mixed", str(assets["mixed"]),
                             "--epochs", "1", "--limit-steps", "2")) == 0
    assert len(losses) == 2
    for got, hand in losses:
        assert got == pytest.approx(hand, rel=1e-5)
    paper = {"ce": 1.8, "kd": 0.2, "mixed_ce": 1.8, "mixed_kd": 0.0, "T": 4.0}
    start = read_log(out)[0]
    assert start["recipe"] == "paper" and start["weights"] == paper
    config = load_checkpoint(out / "model.pt")["config"]
    assert config["recipe"] == "paper" and config["objective"] == paper
    assert "recipe paper: weights ce 1.8 kd 0.2 mixed-ce 1.8 mixed-kd 0.0 T 4.0" in \
        capsys.readouterr().out


def test_recipe_values_give_way_to_explicit_flags(assets, tmp_path):
    out = tmp_path / "override"
    assert run_main(_distill(assets, out, "--recipe", "paper", "--mixed", str(assets["mixed"]),
                             "--w-kd", "0.5", "--T", "2", "--epochs", "1",
                             "--limit-steps", "1")) == 0
    assert read_log(out)[0]["weights"] == {"ce": 1.8, "kd": 0.5, "mixed_ce": 1.8,
                                           "mixed_kd": 0.0, "T": 2.0}
    # Without a recipe the defaults are the plain ones: CE only, mixed CE 1 with a set.
    out = tmp_path / "plain"
    assert run_main(_distill(assets, out, "--mixed", str(assets["mixed"]), "--epochs", "1",
                             "--limit-steps", "1")) == 0
    start = read_log(out)[0]
    assert start["recipe"] is None
    assert start["weights"] == {"ce": 1.0, "kd": 0.0, "mixed_ce": 1.0, "mixed_kd": 0.0, "T": 4.0}


def test_recipe_paper_needs_mixed_images(assets, tmp_path, capsys):
    assert run_main(_distill(assets, tmp_path / "x", "--recipe", "paper")) == 2
    assert "--w-mixed-ce/--w-mixed-kd: mixed terms (1.8, 0.0) need mixed images" in \
        capsys.readouterr().err


def test_mixed_epochs_scale_with_kappa(assets, tmp_path):
    # 160 mixed images < 256 labelled: kappa < 1, an epoch stays 256 slots long.
    assert run_main(_distill(assets, tmp_path / "k", "--mixed", str(assets["mixed"]),
                             "--epochs", "2", "--limit-train", "64", "--batch-size",
                             "32")) == 0
    start = read_log(tmp_path / "k")[0]
    # 64 labelled, 160 mixed: an epoch is 160 slots, 2 epochs of 64 -> round(2 * 64/160) = 1.
    assert (start["epoch_slots"], start["epochs"], start["steps_per_epoch"]) == (160, 1, 5)
    assert start["kappa"] == pytest.approx(2.5)


def test_torchrun_two_processes_match_one(assets, tmp_path):
    common = [*TINY, "--teacher", str(assets["teacher"]), "--mixed", str(assets["mixed"]),
              "--w-kd", "0.9", "--w-mixed-kd", "0.5", "--epochs", "1", "--limit-steps", "1",
              "--lr", "0.5", "--lr-decay-epochs", "5", "--no-channels-last", "--limit-test", "201"]
    assert run_main(["distill", *common, "--out", str(tmp_path / "one")]) == 0
    proc = run_torchrun(["distill", *common, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One global batch of 64 real + 64 mixed images, split 32 + 32 per rank; SyncBatchNorm
    # makes the step the same function of the global batch.
    assert_same_step(tmp_path / "one", tmp_path / "two")
    one, two = epochs(tmp_path / "one")[0], epochs(tmp_path / "two")[0]
    assert two["train_images"] == 64 and two["test_images"] == 201   # summed over the ranks
    for key in ("loss", "loss_ce", "loss_kd", "loss_mixed_ce", "loss_mixed_kd", "test_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    assert two["test_top1"] == pytest.approx(one["test_top1"], abs=1.5 / 201)
    assert read_log(tmp_path / "two")[0]["world_size"] == 2


# --------------------------------------------------------------------------------- errors ----
@pytest.fixture(scope="module")
def foreign_set(assets):
    """A generated set whose manifest and shard headers say it was made from CIFAR-10."""
    import hashlib
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save

    path = assets["root"] / "foreign"
    shutil.copytree(assets["mixed"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["data"]["spec"] = "cifar10:/data/cifar"
    manifest["config"]["data"] = "cifar10:/data/cifar"
    for entry in manifest["shards"]:
        shard = path / entry["file"]
        with safe_open(str(shard), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            info = json.loads(f.metadata()["supermix"])
        info["config"] = manifest["config"]
        blob = save(tensors, metadata={"supermix": json.dumps(info, sort_keys=True)})
        shard.write_bytes(blob)
        entry["sha256"] = hashlib.sha256(blob).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_bad_arguments_give_one_line_and_status_2(assets, foreign_set, tmp_path):
    five = make_teacher(tmp_path / "five.pt", num_classes=5)
    cases = [
        (["--teacher", str(five)], ("predicts 5 classes", "needs 10")),
        (["--teacher", str(assets["teacher"]), "--mixed", str(foreign_set)],
         ("generated from 'cifar10'", "'fashion-mnist'")),
        (["--teacher", str(tmp_path / "nope.pt")], ("--teacher", "nope.pt")),
        (["--teacher", str(assets["teacher"]), "--mixed", str(tmp_path / "nothing")],
         ("--mixed", "nothing")),
        (["--teacher", str(assets["teacher"]), "--data", f"fashion-mnist:{tmp_path / 'nodata'}"],
         ("Fashion-MNIST not found",)),
        (["--teacher", str(assets["teacher"]), "--w-mixed-kd", "1"], ("need mixed images",)),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(
            lambda c: run_cli(["distill", *c[0], *TINY, "--out", str(tmp_path / "out")]), cases))
    for (args, fragments), proc in zip(cases, procs):
        assert_one_line_error(proc, *fragments)


# ---------------------------------------------------------------------------- replication ----
def test_quick_replication(tmp_path):
    """The whole paired study under the paper's protocol on a tiny subset: every set and run is
    made by the package's commands, every run beats chance (the script checks), and the report
    has the reading rule, every method, the paired differences with Holm's p, the reruns and
    the per-set measures, which agree with the sets."""
    from supermix.study import mixed_set_statistics
    from supermix.teachers import default_teacher_path

    if not default_teacher_path().exists():
        pytest.skip(f"the shipped teacher {default_teacher_path()} is missing")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "replicate_fmnist.py"),
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "RESULTS.md").read_text()
    for method in ("KD + CutMix", "KD + SuperMix (newton_sp)"):
        assert f"| {method} | 2 |" in report, method
    for extra in ("KD + SuperMix (default solver)", "KD + MixUp", "KD (no mixed images)"):
        assert f"| {extra} | 1 |" in report, extra
    assert "## The reading, fixed before the run" in report
    row = next(line for line in report.splitlines()
               if line.startswith("| KD + SuperMix (newton_sp) − KD + CutMix | the paper's claim"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6] in ("yes", "no") and float(cells[4]) == float(cells[5])  # one contrast
    assert "Verdict by the rule above:" in report
    assert "supermix generate" in report and "--recipe paper" in report
    assert "--method newton_sp --min-iters 1" in report
    # The rerun of seed 0 gives the same shards and the same accuracy.
    assert "- set supermix-newton_sp, seed 0: shards identical (sha256)" in report
    assert "- run kd_cutmix, seed 0: test top-1" in report and "DIFFER" not in report
    assert "first run" not in report
    # The per-set row of seed 0's and 1's newton_sp sets: their measures, averaged.
    stats = [mixed_set_statistics(tmp_path / "sets" / f"supermix-newton_sp-512-512-s{seed}")
             for seed in (0, 1)]
    row = next(line for line in report.splitlines()
               if line.startswith("| SuperMix, newton_sp, min_iters 1 | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == f"{100 * (stats[0]['zero_iters'] + stats[1]['zero_iters']) / 2:.1f}%"
    assert cells[5] == "0.0%"  # min_iters 1: no sample stays a plain average
    assert cells[7] == f"{(stats[0]['kl_to_target'] + stats[1]['kl_to_target']) / 2:.3f}"
    assert (tmp_path / "replication.png").stat().st_size > 10_000

def test_warmup_lr_factor_by_hand():
    """The teacher recipe's lr multiplier: linear warm-up, then cosine or steps (by hand)."""
    import math

    cosine = tr.warmup_lr_factor(4, 10, 1.0, "cosine", 0.1)
    assert [cosine(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    steps = tr.warmup_lr_factor(4, 10, 0.0, "step", 0.1)          # milestones 2 and 3
    assert [steps(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert tr.warmup_lr_factor(4, 10, 0.0, "step", 0.5, [1])(10) == pytest.approx(0.5)
