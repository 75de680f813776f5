"""Command-line flags of ``supermix generate`` and ``supermix distill`` that no other test
covers, each checked for what it changes: the shards and manifest a generate flag writes, the
mixed images and mixer settings a distill run uses (issue 14).

Everything runs in-process (``run_main``) on a tiny random teacher and a few images.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from supermix import mixed_set
from supermix.checkpoint import sha256_file
from supermix.data import DEFAULT_FASHION_MNIST_ROOT
from supermix.mixed_set import MixedDataset
from testing import TINY, epochs, make_generated, make_teacher, read_log, run_main, state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- generate ------
def _generate(out: Path, teacher: Path, *extra: str, size: int = 8) -> dict:
    """``supermix generate`` with a few images; returns the manifest."""
    assert run_main(["generate", "--teacher", str(teacher), "--out", str(out), "--size",
                     str(size), "--shard-size", "8", "--batch-size", "8", "--max-iters", "10",
                     "--device", "cpu", "--no-progress", *extra]) == 0
    return json.loads((out / mixed_set.MANIFEST).read_text())


def _shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.safetensors"))}


def _fields(folder: Path) -> dict[str, torch.Tensor]:
    ds = MixedDataset(folder)
    return {name: ds.read_field(name) for name in ("mixed", "sources", "mask_logits")}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory, tiny_teacher):
    """The set every generate flag is compared against: all settings at their defaults."""
    out = tmp_path_factory.mktemp("generate") / "default"
    return out, _generate(out, tiny_teacher)


def test_generate_data_root_default_folder_gives_the_same_set(tmp_path, tiny_teacher,
                                                              default_set):
    """--data-root naming the default Fashion-MNIST folder: the same data, the same shards."""
    out, manifest = default_set
    other = _generate(tmp_path / "root", tiny_teacher, "--data-root", DEFAULT_FASHION_MNIST_ROOT)
    assert _shard_hashes(tmp_path / "root") == _shard_hashes(out)
    assert other["data"]["spec"] == manifest["data"]["spec"]
    assert other["config"]["data"] == manifest["config"]["data"]
    assert other["data"]["size"] == manifest["data"]["size"] == 60000


def test_generate_data_root_is_where_the_images_are_read(tmp_path, tiny_teacher, default_set,
                                                         capsys):
    """The same four files in another folder: the same samples, that folder in the manifest; a
    folder without them: one error naming it."""
    out, _ = default_set
    copy = tmp_path / "fmnist"
    copy.mkdir()
    for f in Path(DEFAULT_FASHION_MNIST_ROOT).glob("*-ubyte.gz"):
        (copy / f.name).symlink_to(f)
    m = _generate(tmp_path / "copy", tiny_teacher, "--data-root", str(copy))
    assert str(copy) in m["data"]["spec"]
    a, b = _fields(out), _fields(tmp_path / "copy")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert run_main(["generate", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "none"),
                     "--size", "8", "--device", "cpu", "--no-progress", "--data-root",
                     str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "none" / mixed_set.MANIFEST).exists()


def test_generate_split_test_mixes_test_images(tmp_path, tiny_teacher, default_set):
    out, train = default_set
    test = _generate(tmp_path / "test", tiny_teacher, "--split", "test")
    assert train["data"]["split"] == train["config"]["split"] == "train"
    assert test["data"]["split"] == test["config"]["split"] == "test"
    assert test["data"]["size"] == test["config"]["dataset_size"] == 10000
    assert train["data"]["size"] == 60000
    a, b = _fields(out), _fields(tmp_path / "test")
    assert int(b["sources"].max()) < 10000
    # Other source images: the mixed pixels differ.
    assert not torch.equal(a["mixed"], b["mixed"])


def test_generate_k_3_writes_three_sources(tmp_path, tiny_teacher, default_set):
    out, default = default_set
    m = _generate(tmp_path / "k3", tiny_teacher, "--k", "3")
    assert default["config"]["k"] == 2 and m["config"]["k"] == 3
    f = _fields(tmp_path / "k3")
    assert f["sources"].shape == (8, 3)
    assert f["mask_logits"].shape == (8, 3, 8, 8)
    assert _fields(out)["sources"].shape == (8, 2)
    # k distinct source images per sample.
    assert all(len(set(row.tolist())) == 3 for row in f["sources"])


def test_generate_mask_size_sets_the_mask_grid(tmp_path, tiny_teacher, default_set):
    out, default = default_set
    m = _generate(tmp_path / "m4", tiny_teacher, "--mask-size", "4")
    assert default["config"]["mask_size"] == 8 and m["config"]["mask_size"] == 4
    assert _fields(tmp_path / "m4")["mask_logits"].shape == (8, 2, 4, 4)
    assert _fields(out)["mask_logits"].shape == (8, 2, 8, 8)


def _image_tree(root: Path, height: int, width: int) -> None:
    """An ImageFolder tree (train/ and val/, classes ant and bee) of random RGB PNGs."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    for split, count in (("train", 5), ("val", 2)):
        for label in ("ant", "bee"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


def test_generate_imagefolder_mixes_at_the_teachers_input_size(tmp_path, capsys):
    """Data other than Fashion-MNIST: an ImageFolder tree, mixed at the size the teacher was
    trained on (``input_size`` 3x24x24: resized to 24 / 0.875 = 27, centre-cropped to 24, the
    evaluation transform), not at the ImageFolder default of 224. Oracle: torchvision's own
    ImageFolder and transforms read the sources again, mixed with the stored mask logits."""
    from torchvision import datasets, transforms

    from supermix import models
    from supermix.checkpoint import save_checkpoint
    from supermix.teachers import load_teacher
    from supermix_ext.reference import mix_ref

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    # 27 x 31 pixels: Resize(27) leaves them as they are, so the oracle's crop is exact.
    tree = tmp_path / "tree"
    _image_tree(tree, 27, 31)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, models.create("resnet8", num_classes=2, in_channels=3),
                    {"arch": "resnet8", "num_classes": 2, "in_channels": 3, "data": "imagefolder",
                     "input_size": [3, 24, 24], "mean": mean, "std": std})
    out = tmp_path / "set"
    m = _generate(out, teacher, "--data", f"imagefolder:{tree}", "--mask-size", "6", size=6)
    assert m["config"]["image_shape"] == [3, 24, 24]
    assert m["data"]["size"] == 10
    ds = MixedDataset(out)
    assert ds.class_names == ["ant", "bee"]
    mixed = ds.read_field("mixed")
    assert mixed.shape == (6, 3, 24, 24)
    oracle = datasets.ImageFolder(str(tree / "train"), transform=transforms.Compose(
        [transforms.CenterCrop(24), transforms.ToTensor()]))
    sources = ds.read_field("sources")
    src = torch.stack([torch.stack([oracle[int(i)][0] for i in row]) for row in sources])
    expected, _ = mix_ref(src, ds.read_field("mask_logits"))
    assert (expected - mixed.float() / 255).abs().max() <= 0.5 / 255 + 1e-5
    # The target mixes the teacher's classes of the sources (on the normalised, resized images)
    # with the weights r.
    normalised = (src.flatten(0, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    with torch.no_grad():
        labels = load_teacher(teacher)(normalised).argmax(1).view_as(sources)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    y_hat = (ds.read_field("r").float()[..., None] * onehot).sum(1)
    torch.testing.assert_close(ds.read_field("y_hat").float(), y_hat)
    # ``supermix show`` draws the sources at the set's size too.
    picture = tmp_path / "show.png"
    capsys.readouterr()
    assert run_main(["show", str(out), "--out", str(picture), "--num", "2"]) == 0
    assert "sources not drawn" not in capsys.readouterr().err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shipped_teacher() -> Path:
    """The shipped ResNet-20: unlike the random teacher it needs several solver iterations, so
    the solver's weights show in the masks."""
    from supermix.teachers import default_teacher_path

    path = default_teacher_path()
    if not path.is_file():
        pytest.skip(f"the shipped teacher {path} is missing")
    return path


# sigma smooths the Newton direction (solver eq. 7): it acts with --method newton_sp.
@pytest.mark.parametrize("flag,key,value,method", [("--lambda-s", "lambda_s", 3.5, "margin_gd"),
                                                   ("--sigma", "sigma", 0.5, "newton_sp")])
def test_generate_solver_weights_change_the_masks(tmp_path, shipped_teacher, flag, key, value,
                                                  method):
    base = _generate(tmp_path / "base", shipped_teacher, "--method", method)
    m = _generate(tmp_path / key, shipped_teacher, "--method", method, flag, str(value))
    assert base["config"][key] != value
    assert m["config"][key] == pytest.approx(value)
    # Every other setting is the same.
    others = {k: v for k, v in m["config"].items() if k != key}
    assert others == {k: v for k, v in base["config"].items() if k != key}
    assert base["totals"]["mean_iters"] > 0         # the solver iterated: the weight mattered
    a, b = _fields(tmp_path / "base"), _fields(tmp_path / key)
    assert b["mask_logits"].shape == a["mask_logits"].shape == (8, 2, 8, 8)
    assert not torch.equal(a["mask_logits"], b["mask_logits"])


# ------------------------------------------------------------------------------ distill ------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = make_teacher(root / "teacher.pt")
    return {"teacher": teacher,
            "mixed": make_generated(root / "mixup", teacher, size=160, mixer="mixup")}


def _distill(assets, out, *extra):
    return ["distill", "--teacher", str(assets["teacher"]), *TINY, "--out", str(out), *extra]


def test_distill_limit_mixed_uses_the_first_images(assets, tmp_path, capsys):
    assert run_main(_distill(assets, tmp_path / "all", "--mixed", str(assets["mixed"]),
                             "--epochs", "1", "--limit-steps", "1")) == 0
    assert read_log(tmp_path / "all")[0]["mixed_images"] == 160
    capsys.readouterr()
    assert run_main(_distill(assets, tmp_path / "some", "--mixed", str(assets["mixed"]),
                             "--limit-mixed", "48", "--epochs", "1", "--limit-steps", "1")) == 0
    start = read_log(tmp_path / "some")[0]
    assert start["mixed_images"] == 48
    assert start["args"]["limit_mixed"] == 48
    assert start["kappa"] == pytest.approx(48 / 256)
    assert "(48 images" in capsys.readouterr().out


def test_distill_online_supermix_settings_reach_the_solver(assets, tmp_path, monkeypatch):
    from supermix import mixers

    calls = []
    original = mixers.solve

    def recording(teacher, images, config, *args, **kwargs):
        result = original(teacher, images, config, *args, **kwargs)
        calls.append((config, result))
        return result

    monkeypatch.setattr(mixers, "solve", recording)
    out = tmp_path / "online"
    assert run_main(_distill(assets, out, "--online", "supermix", "--k", "3", "--lambda-s", "7.5",
                             "--sigma", "0.5", "--mask-size", "4", "--max-iters", "3",
                             "--method", "newton_sp", "--epochs", "1", "--limit-steps", "2")) == 0
    assert len(calls) == 2                                  # one mix per step
    for config, result in calls:                           # the mixer passes its SolverConfig
        assert config.k == 3
        assert config.lambda_s == 7.5 and config.sigma == 0.5
        assert config.mask_size == (4, 4) and config.max_iters == 3
        assert config.method == "newton_sp"
        assert result.sources.shape == (64, 3)
        assert result.mask_logits.shape == (64, 3, 4, 4)
        assert int(result.iters.max()) <= 3
    args = read_log(out)[0]["args"]
    assert (args["online"], args["k"], args["lambda_s"], args["sigma"], args["mask_size"],
            args["max_iters"], args["method"]) == ("supermix", 3, 7.5, 0.5, 4, 3, "newton_sp")
    (record,) = epochs(out)
    assert record["steps"] == 2 and math.isfinite(record["loss_mixed_ce"])


def test_distill_amp_bf16_on_cpu(assets, tmp_path):
    common = ["--w-kd", "0.5", "--epochs", "1", "--limit-steps", "2"]
    assert run_main(_distill(assets, tmp_path / "fp32", *common)) == 0
    assert run_main(_distill(assets, tmp_path / "bf16", *common, "--amp", "bf16")) == 0
    assert read_log(tmp_path / "bf16")[0]["args"]["amp"] == "bf16"
    (record,) = epochs(tmp_path / "bf16")
    assert record["steps"] == 2 and math.isfinite(record["loss"])
    # bf16 autocast changes the arithmetic: the same seeded (and otherwise deterministic) run
    # ends with other weights, all finite.
    fp32 = state_dict(tmp_path / "fp32" / "model.pt")
    bf16 = state_dict(tmp_path / "bf16" / "model.pt")
    assert all(torch.isfinite(v).all() for v in bf16.values() if v.is_floating_point())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32 if fp32[k].is_floating_point())
