"""Data: Fashion-MNIST from its idx files, specs, normalisation, batched augmentation."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from supermix import data
from supermix.runtime import make_generator
from supermix.training import CropFlip, EpochPlan, ImageBank, bank_stream, crop_flip
from supermix.errors import MissingFileError, UsageError

FMNIST = Path(data.DEFAULT_FASHION_MNIST_ROOT)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")


@needs_fmnist
@pytest.mark.parametrize("train,n", [(True, 60000), (False, 10000)])
def test_fashion_mnist_sizes(train, n):
    ds = data.FashionMNIST(train=train)
    assert len(ds) == n
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 1, 28, 28)
    assert ds.labels.min().item() == 0 and ds.labels.max().item() == 9
    # Balanced classes, as published.
    assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
    image, label = ds[n - 1]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    assert isinstance(label, int) and 0 <= label <= 9


@needs_fmnist
def test_as_cifar_shape_and_content():
    plain = data.FashionMNIST(train=False)
    wide = data.FashionMNIST(train=False, as_cifar=True)
    image, _ = wide[7]
    assert image.shape == (3, 32, 32)
    for c in range(3):
        torch.testing.assert_close(image[c, 2:30, 2:30], plain[7][0][0])
    assert image[:, :2].abs().sum() == 0 and image[:, :, -2:].abs().sum() == 0


@needs_fmnist
def test_transform_receives_uint8_tensor():
    seen = {}

    def transform(x):
        seen["dtype"], seen["shape"] = x.dtype, tuple(x.shape)
        return x

    data.FashionMNIST(train=False, transform=transform)[0]
    assert seen == {"dtype": torch.uint8, "shape": (1, 28, 28)}


@needs_fmnist
def test_build_dataset_and_load_tensors():
    train = data.build_dataset("fashion-mnist", train=True)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    x, y = data.load_tensors("fashion-mnist", train=False, limit=2000)
    assert x.shape == (2000, 1, 28, 28) and y.shape == (2000,) and y.dtype == torch.long
    # Normalised with the training statistics: roughly zero mean, unit spread on test images.
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    x3, _ = data.load_tensors(f"fashion-mnist:{FMNIST}", as_cifar=True, limit=5)
    assert x3.shape == (5, 3, 32, 32)
    raw, _ = data.load_tensors(normalize=False, limit=5)
    assert raw.min() >= 0 and raw.max() <= 1


def test_unknown_spec():
    with pytest.raises(ValueError) as info:
        data.build_dataset("mnist-ish", train=True)
    message = str(info.value)
    assert "data spec" in message and "mnist-ish" in message and "fashion-mnist" in message
    assert isinstance(info.value, UsageError)


def test_cifar_needs_a_folder():
    with pytest.raises(UsageError, match="needs a folder"):
        data.build_dataset("cifar100", train=True)


def test_missing_cifar_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        data.build_dataset(f"cifar100:{tmp_path}", train=True)


def test_missing_root_mentions_apt_get(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.FashionMNIST(root=tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "--data-root" in str(info.value)
    assert isinstance(info.value, MissingFileError)
    with pytest.raises(FileNotFoundError, match="apt-get"):
        data.load_tensors(f"fashion-mnist:{tmp_path}")


def test_corrupt_idx_file(tmp_path):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                + b"\x00" * 100)  # header promises 7840 bytes
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(MissingFileError, match="truncated"):
        data.FashionMNIST(root=tmp_path, train=False)


def test_idx_roundtrip(tmp_path):
    values = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + b"".join(s.to_bytes(4, "big") for s in values.shape)
                     + values.numpy().tobytes())
    assert torch.equal(data.read_idx(path), values)


def test_class_names_and_counts():
    assert data.class_names("fashion-mnist") == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert data.num_classes("fashion-mnist") == 10
    assert data.num_classes("cifar10:/x") == 10 and len(data.class_names("cifar10:/x")) == 10
    names = data.class_names("cifar100:/x")
    assert data.num_classes("cifar100:/x") == 100 and len(set(names)) == 100
    assert list(names) == sorted(names)


def test_imagefolder_class_names(tmp_path):
    for split in ("train", "val"):
        for name in ("zebra", "ant"):
            (tmp_path / split / name).mkdir(parents=True)
    assert data.class_names(f"imagefolder:{tmp_path}") == ("ant", "zebra")
    assert data.num_classes(f"imagefolder:{tmp_path}") == 2


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100", "imagenet"])
def test_normalize_roundtrip(name):
    channels = len(data.stats(name)[0])
    x = torch.rand(3, channels, 5, 7)
    torch.testing.assert_close(data.denormalize(data.normalize(x, name), name), x)
    # One-channel statistics broadcast over the three channels of the as_cifar view.
    if channels == 1:
        assert data.normalize(torch.rand(2, 3, 4, 4), name).shape == (2, 3, 4, 4)


def test_crop_flip_matches_per_sample_crop():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (5, 2, 6, 7), dtype=torch.uint8)
    params = CropFlip.draw(5, padding=2, flip=False, generator=g)
    out = crop_flip(images, params, padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(5):
        dy, dx = int(params.dy[b]), int(params.dx[b])
        expected = padded[b, :, dy:dy + 6, dx:dx + 7]
        assert torch.equal(out[b], expected), f"sample {b}: offsets ({dy}, {dx})"
    params = CropFlip.draw(5, padding=0, flip=True, generator=g)
    flipped = crop_flip(images, params, padding=0)
    for b in range(5):
        expected = images[b].flip(-1) if bool(params.flip[b]) else images[b]
        assert torch.equal(flipped[b], expected), f"sample {b}"
    assert torch.equal(crop_flip(images, CropFlip.draw(5, 0, False, g), 0), images)


def test_image_bank_batches_and_determinism():
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37)
    bank = ImageBank(images, [0.5], [0.25], padding=2, flip=True, repeat_channels=3)

    def epoch(seed):
        plan = EpochPlan(37, 10, seed, epoch=0)
        return list(bank_stream(bank, labels, plan, lambda s: s, make_generator(seed, "aug"),
                                torch.device("cpu"), torch.contiguous_format))

    batches = epoch(1)
    # The last partial batch is dropped, so every step has the global batch.
    assert len(batches) == 3 and [b[0].shape[0] for b in batches] == [10, 10, 10]
    assert batches[0][0].shape == (10, 3, 8, 8) and batches[0][0].dtype == torch.float32
    assert len(set(torch.cat([b[1] for b in batches]).tolist())) == 30
    again = epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


@needs_fmnist
def test_train_transforms_run():
    ds = data.build_dataset("fashion-mnist", train=True, randaugment=True)
    x, _ = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    ds = data.build_dataset("fashion-mnist", train=True, as_cifar=True)
    assert ds[0][0].shape == (3, 32, 32)
