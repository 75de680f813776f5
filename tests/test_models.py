"""Model zoo: every network runs on Fashion-MNIST and CIFAR shapes; checkpoints round-trip."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from supermix import models
from supermix.checkpoint import (MissingFileError, atomic_save, load_checkpoint,
                                 save_checkpoint)
from supermix.errors import UsageError
from supermix.teachers import load_teacher

ZOO = [name for name in models.available() if not name.startswith("tv:")]
# The networks of the paper's tables must all be there under these names.
TABLE_MODELS = ["resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
                "mobilenetv2", "shufflenetv1", "shufflenetv2"]


def test_table_models_listed():
    missing = [name for name in TABLE_MODELS if name not in ZOO]
    assert not missing, f"not in models.available(): {missing}"


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_forward_shapes(name, in_channels, size):
    torch.manual_seed(0)
    model = models.create(name, num_classes=7, in_channels=in_channels)
    # Odd batch of 3: catches reshapes that assume a power of two.
    x = torch.randn(3, in_channels, size, size)
    model.train()
    out = model(x)
    assert out.shape == (3, 7), f"{name} on {tuple(x.shape)}: got {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite logits in train mode"
    if in_channels == 1:  # one backward per model is enough to catch in-place autograd errors
        out.sum().backward()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_parameter_counts_match_repdistiller():
    # Sizes reported for the CIFAR-100 versions in CRD / RepDistiller (in millions).
    expected = {"resnet20": 0.28, "resnet32x4": 7.43, "wrn_40_2": 2.26, "vgg13": 9.46,
                "resnet8x4": 1.23}
    for name, millions in expected.items():
        n = sum(p.numel() for p in models.create(name, num_classes=100).parameters()) / 1e6
        assert abs(n - millions) / millions < 0.03, \
            f"{name}: {n:.3f}M params, expected ~{millions}M"


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(
            memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        models.create("resnet21", num_classes=10)
    message = str(info.value)
    assert "name" in message and "resnet21" in message and "resnet20" in message
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0},
                                    {"num_classes": 2.5}])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        models.create("resnet8", **kwargs)


def test_aliases():
    assert isinstance(models.create("WRN-16-2"), type(models.create("wrn_16_2")))
    assert isinstance(models.create("mobile_half"), type(models.create("mobilenetv2")))


def test_torchvision_model_no_download():
    model = models.create("tv:resnet18", num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="tv:"):
        models.create("tv:not_a_model")


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _config(arch="resnet8"):
    return {"arch": arch, "num_classes": 10, "in_channels": 1, "data": "fashion-mnist"}


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10, in_channels=1)
    model.train()(torch.randn(4, 1, 28, 28))  # move the BN running statistics off their init
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model, _config(), epoch=3, note="hello")
    loaded = load_teacher(path)
    assert not loaded.training
    assert loaded.supermix_config["arch"] == "resnet8"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["note"] == "hello"


def test_atomic_write_leaves_no_temp_file(tmp_path):
    model = models.create("resnet8", num_classes=10, in_channels=1)
    save_checkpoint(tmp_path / "m.pt", model, _config())
    save_checkpoint(tmp_path / "m.pt", model, _config())  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    # A write that fails half-way keeps the old file and leaves nothing else behind.
    before = (tmp_path / "m.pt").read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"bad": lambda: None}, tmp_path / "m.pt")
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    assert (tmp_path / "m.pt").read_bytes() == before


def test_save_checkpoint_requires_config_keys(tmp_path):
    model = models.create("resnet8", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="arch"):
        save_checkpoint(tmp_path / "m.pt", model, {"num_classes": 10})


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load_teacher(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MissingFileError, match="corrupt"):
        load_teacher(corrupt)
    model = models.create("resnet8", num_classes=10, in_channels=1)
    good = save_checkpoint(tmp_path / "good.pt", model, _config())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(MissingFileError, match="corrupt"):
        load_teacher(truncated)
    # Weights of one architecture under another's name.
    wrong = save_checkpoint(tmp_path / "wrong.pt", model, _config(arch="resnet20"))
    with pytest.raises(MissingFileError, match="do not fit"):
        load_teacher(wrong)
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(MissingFileError, match="state_dict"):
        load_checkpoint(tmp_path / "plain.pt")


def test_weights_only_refuses_pickled_code(tmp_path):
    # A checkpoint holding a module object (arbitrary pickle) must not load.
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "config": _config(), "module": nn.Linear(2, 2)}, path)
    with pytest.raises(MissingFileError, match="weights_only"):
        load_teacher(path)
