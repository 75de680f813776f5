"""``supermix train``: the soft-label loss by hand, the union of real and mixed images, exact
resume, torchrun against one process, and one-line errors."""
from __future__ import annotations

import concurrent.futures
import json
import math

import pytest
import torch
import torch.nn.functional as F

from supermix.mixed_set import GeneratedSet
from supermix.training.objectives import mixed_targets, soft_cross_entropy
from testing import (TINY, assert_one_line_error, assert_same_step, epochs, make_generated,
                     make_teacher, max_abs_diff, read_log, run_cli, run_main, run_torchrun,
                     state_dict, without_timing)

LN3 = math.log(3.0)


def test_soft_cross_entropy_hand_values():
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]])       # softmax (3/4, 1/4), (1/2, 1/2)
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expected = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) - math.log(0.5)) / 2
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # One-hot targets: the ordinary cross-entropy.
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    torch.testing.assert_close(soft_cross_entropy(z, F.one_hot(y, 4).float()),
                               F.cross_entropy(z, y))


def test_mixed_label_default_describes_the_image():
    """Like the mixers' labels, a mixed image is labelled by what the teacher sees in it."""
    from supermix.commands.cli import build_parser

    args = build_parser().parse_args(["train", "--mixed", "somewhere"])
    assert args.mixed_label == "teacher_probs"


def test_mixed_label_choices():
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    y_hat = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.3, 0.7]])
    g = GeneratedSet(path=None, images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
                        y_hat=y_hat, teacher_probs=probs, manifest={})
    assert torch.equal(mixed_targets(g, "y_hat"), y_hat)
    assert torch.equal(mixed_targets(g, "teacher_probs"), probs)
    assert torch.equal(mixed_targets(g, "teacher_top1"), torch.tensor([[0.0, 1.0, 0.0],
                                                                       [1.0, 0.0, 0.0]]))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    teacher = make_teacher(root / "teacher.pt")
    return {"root": root, "teacher": teacher,
            "mixed": make_generated(root / "cutmix", teacher, size=192, mixer="cutmix")}


def _train(out, *extra):
    return ["train", "--arch", "resnet8", *TINY, "--out", str(out), *extra]


def test_union_of_real_and_mixed_images(assets, tmp_path):
    out = tmp_path / "u"
    assert run_main(_train(out, "--mixed", str(assets["mixed"]), "--epochs", "4",
                           "--randaugment", "mixed", "--mixed-label", "teacher_probs")) == 0
    start = read_log(out)[0]
    # 256 real + 192 mixed slots; 4 epochs of the real images -> round(4 * 256 / 448) = 2.
    assert (start["epoch_slots"], start["epochs"], start["steps_per_epoch"]) == (448, 2, 7)
    records = epochs(out)
    assert [r["train_images"] for r in records] == [7 * 64, 7 * 64]
    assert all(math.isfinite(r["loss"]) and 0 <= r["test_top1"] <= 1 for r in records)
    assert (out / "model.pt").exists()


def test_resume_continues_bit_exactly(assets, tmp_path):
    common = ["--mixed", str(assets["mixed"]), "--epochs", "6", "--lr-decay-epochs", "3"]
    assert run_main(_train(tmp_path / "a", *common)) == 0
    assert run_main(_train(tmp_path / "b", *common, "--stop-after", "2")) == 0
    assert run_main(_train(tmp_path / "b", *common, "--resume")) == 0
    worst, where = max_abs_diff(state_dict(tmp_path / "a" / "model.pt"),
                                state_dict(tmp_path / "b" / "model.pt"))
    assert worst == 0.0, f"resumed weights differ by {worst} at {where}"
    assert without_timing(epochs(tmp_path / "a")) == without_timing(epochs(tmp_path / "b"))


def test_torchrun_two_processes_match_one(assets, tmp_path):
    common = [*TINY, "--arch", "resnet8", "--mixed", str(assets["mixed"]), "--epochs", "1",
              "--limit-steps", "1", "--lr", "0.5", "--lr-decay-epochs", "5",
              "--no-channels-last", "--no-scale-epochs"]
    assert run_main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    proc = run_torchrun(["train", *common, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_step(tmp_path / "one", tmp_path / "two")
    one, two = epochs(tmp_path / "one")[0], epochs(tmp_path / "two")[0]
    assert two["train_images"] == one["train_images"] == 64
    assert two["test_images"] == 200
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert two["train_top1"] == pytest.approx(one["train_top1"])


def test_bad_arguments_give_one_line_and_status_2(assets, tmp_path):
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(assets["mixed"], foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["data"]["spec"] = "cifar100:/data/cifar"
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    cases = [
        (["--mixed", str(foreign)], ("generated from 'cifar100'",)),
        (["--mixed", str(tmp_path / "missing")], ("--mixed", "missing")),
        (["--mixed", str(assets["mixed"]), "--as-cifar"], ("shape [1, 28, 28]",)),
        (["--randaugment", "mixed"], ("--randaugment",)),
        (["--data", f"cifar10:{tmp_path / 'nocifar'}"], ("cifar10 not found",)),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(lambda c: run_cli(_train(tmp_path / "out", *c[0])), cases))
    for (args, fragments), proc in zip(cases, procs):
        assert_one_line_error(proc, *fragments)
