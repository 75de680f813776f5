"""The shipped default teacher, and the train-teacher command (tiny runs, resume, errors)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supermix import data
from supermix.commands import cli
from supermix.checkpoint import load_checkpoint
from supermix.teachers import default_teacher_path, load_teacher

TEACHER = default_teacher_path()
CARD = TEACHER.with_suffix(".json")
FMNIST = Path(data.DEFAULT_FASHION_MNIST_ROOT)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")
needs_teacher = pytest.mark.skipif(
    not TEACHER.is_file(), reason=f"default teacher not trained yet: {TEACHER} is missing")


@needs_teacher
def test_teacher_card():
    card = json.loads(CARD.read_text())
    assert card["architecture"] == "resnet20" and card["data"] == "fashion-mnist"
    assert card["test_images"] == 10000, "the card's accuracy must be on the full test set"
    assert card["test_accuracy"] >= 0.93, f"card says {card['test_accuracy']:.4f}"
    assert card["command"].startswith("supermix train-teacher")
    for key in ("seed", "epochs", "training_time_s", "torch_version"):
        assert key in card
    assert TEACHER.stat().st_size < 4 * 2**20


@needs_teacher
def test_teacher_config_and_weights_only():
    ckpt = torch.load(TEACHER, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "config"}
    config = ckpt["config"]
    assert (config["arch"], config["num_classes"], config["in_channels"]) == ("resnet20", 10, 1)
    assert config["input_size"] == [1, 28, 28]
    assert config["class_names"] == list(data.FASHION_MNIST_CLASSES)


@needs_teacher
@needs_fmnist
def test_teacher_accuracy_on_real_test_images():
    torch.manual_seed(0)
    teacher = load_teacher()  # the default path
    assert not teacher.training
    x, y = data.load_tensors("fashion-mnist", train=False, limit=2000)
    with torch.no_grad():
        pred = torch.cat([teacher(chunk).argmax(1) for chunk in x.split(500)])
    accuracy = (pred == y).float().mean().item()
    assert accuracy >= 0.92, f"accuracy on the first 2000 test images: {accuracy:.4f}"


# ----------------------------------------------------------------------------------------------
# The command


def _train(out, *extra):
    return cli.main(["train-teacher", "--arch", "resnet8", "--data", "fashion-mnist",
                     "--batch-size", "64", "--limit-train", "256", "--limit-test", "256",
                     "--threads", "1", "--seed", "3", "--no-progress", "--out", str(out),
                     *extra])


@needs_fmnist
def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1") == 0
    card = json.loads((out / "card.json").read_text())
    assert card["epochs"] == 1 and card["train_images"] == 256 and card["test_images"] == 256
    assert card["command"].startswith("supermix train-teacher --arch resnet8")
    assert 0.0 <= card["test_accuracy"] <= 1.0
    first = load_checkpoint(out / "checkpoint.pt")
    assert first["epoch"] == 1 and len(first["history"]) == 1

    # Without --resume an existing run is not overwritten.
    assert _train(out, "--epochs", "2") == 2
    assert "--resume" in capsys.readouterr().err

    assert _train(out, "--epochs", "2", "--resume") == 0
    assert "resuming" in capsys.readouterr().out
    second = load_checkpoint(out / "checkpoint.pt")
    assert second["epoch"] == 2 and len(second["history"]) == 2
    assert second["history"][0] == first["history"][0]
    # The step counter continued: 2 epochs of 4 steps.
    assert second["history"][1]["steps"] == 8
    # The shared log and its keys (the same as distill's and train's).
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "epoch", "resume", "epoch", "end"]
    assert {"test_top1", "test_top5", "train_top1", "loss"} <= set(records[1])
    card = json.loads((out / "card.json").read_text())
    assert len(card["commands"]) == 2 and card["command"].endswith("--resume")
    model = load_teacher(out / "model.pt")
    assert not model.training and model.supermix_config["arch"] == "resnet8"
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "checkpoint.pt", "log.jsonl",
                                                      "model.pt"]


@needs_fmnist
def test_resume_is_exact(tmp_path):
    # Two epochs in one go give the same weights as one epoch, then --resume for the second:
    # same data order, augmentation, momentum and lr. (Under cosine, --resume with more epochs
    # stretches the schedule, so the step schedule is used for an exact comparison.)
    step = ("--schedule", "step", "--milestones", "1")
    assert _train(tmp_path / "c", "--epochs", "2", *step) == 0
    assert _train(tmp_path / "d", "--epochs", "1", *step) == 0
    assert _train(tmp_path / "d", "--epochs", "2", *step, "--resume") == 0
    c = load_checkpoint(tmp_path / "c" / "model.pt")["state_dict"]
    d = load_checkpoint(tmp_path / "d" / "model.pt")["state_dict"]
    for key in c:
        torch.testing.assert_close(c[key], d[key], msg=lambda m, key=key: f"{key}: {m}")


@needs_fmnist
def test_resume_refuses_other_arch(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "1") == 0
    status = cli.main(["train-teacher", "--arch", "resnet20", "--limit-train", "256",
                       "--out", str(tmp_path), "--resume", "--epochs", "2"])
    assert status == 2
    assert "resnet8" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["train-teacher", "--arch", "resnet21"], "resnet21"),
    (["train-teacher", "--data", "mnist"], "data spec"),
    (["train-teacher", "--data", "fashion-mnist:/nonexistent/fm"], "apt-get"),
])
def test_bad_arguments_one_line_exit_2(argv, needle, tmp_path, capsys):
    status = cli.main([*argv, "--out", str(tmp_path / "x"), "--limit-train", "64"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("supermix: error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train-teacher", "--epochs", "0"])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_python_m_supermix_help():
    result = subprocess.run([sys.executable, "-m", "supermix", "train-teacher", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--resume" in result.stdout and "--schedule" in result.stdout


def test_imagefolder_run(tmp_path):
    # The per-sample DataLoader path: an ImageFolder tree with train/ and val/ splits.
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in ("ant", "bee"):
            folder = tmp_path / "tree" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (40, 36, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    out = tmp_path / "run"
    status = cli.main(["train-teacher", "--arch", "resnet8", "--data",
                       f"imagefolder:{tmp_path / 'tree'}", "--image-size", "32", "--epochs", "1",
                       "--batch-size", "5", "--threads", "1", "--no-progress", "--out", str(out)])
    assert status == 0
    card = json.loads((out / "card.json").read_text())
    assert card["num_classes"] == 2 and card["class_names"] == ["ant", "bee"]
    assert card["train_images"] == 12 and card["test_images"] == 4
    assert card["input_size"] == [3, 32, 32]
    assert load_teacher(out / "model.pt").supermix_config["mean"] == [0.485, 0.456, 0.406]
