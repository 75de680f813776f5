"""What a training command trains on: the labelled splits of a data spec and a mixed set."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ..data import IMAGEFOLDER_IMAGE_SIZE
from ..errors import UsageError
from ..mixed_set import GeneratedSet
from ..runtime import DistInfo, make_generator
from .batches import EpochPlan, ImageBank, bank_stream, dataset_stream

__all__ = ["LabelledData", "mixed_bank", "check_generated", "generated_notes"]


class LabelledData:
    """The labelled train split and the test split of a data spec, for the training commands.

    Fashion-MNIST and CIFAR are held in memory (:class:`ImageBank`, crop with 2 pixels of
    padding at 28x28 and 4 at 32x32, flip); ImageFolder trees use per-sample transforms
    through a ``DataLoader`` (RandomResizedCrop + flip). ``limit_train`` keeps the first N
    training images, ``limit_test`` the first N test images. ``mean``/``std`` (default: the
    data set's) normalise the in-memory path; ``randaugment`` adds RandAugment to the training
    images.
    """

    def __init__(self, spec: str, root: str | None = None, *, as_cifar: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 limit_train: int | None = None, limit_test: int | None = None,
                 randaugment: bool = False, download: bool = False,
                 image_size: int = IMAGEFOLDER_IMAGE_SIZE,
                 workers: int = 0):
        from .. import data as sm_data

        self.name, self.root = sm_data.parse_spec(spec, root)
        if as_cifar and self.name != "fashion-mnist":
            raise UsageError(f"as_cifar: only for fashion-mnist, got data {spec!r}")
        self.as_cifar = bool(as_cifar)
        self.class_names = list(sm_data.class_names(spec, root))
        self.num_classes = len(self.class_names)
        data_mean, data_std = sm_data.stats(self.name)
        self.mean = [float(v) for v in (mean if mean is not None else data_mean)]
        self.std = [float(v) for v in (std if std is not None else data_std)]
        self.workers = workers
        self.in_memory = self.name != "imagefolder"
        if self.in_memory:
            train_x, train_y = sm_data.load_uint8(self.name, True, self.root, as_cifar, download)
            test_x, test_y = sm_data.load_uint8(self.name, False, self.root, as_cifar, download)
            if limit_train is not None:
                train_x, train_y = train_x[:limit_train], train_y[:limit_train]
            if limit_test is not None:
                test_x, test_y = test_x[:limit_test], test_y[:limit_test]
            repeat = 3 if as_cifar else None
            padding = 4 if train_x.shape[-1] == 32 else 2
            self.train = ImageBank(train_x, self.mean, self.std, padding, True, repeat,
                                   _randaugment() if randaugment else None)
            self.test = ImageBank(test_x, self.mean, self.std, 0, False, repeat)
            self.train_labels, self.test_labels = train_y, test_y
            self.num_train, self.num_test = int(train_y.shape[0]), int(test_y.shape[0])
            self.shape = self.train.shape
        else:
            from torch.utils.data import Subset

            train_ds = sm_data.build_dataset(spec, True, root, randaugment=randaugment,
                                             image_size=image_size)
            test_ds = sm_data.build_dataset(spec, False, root, image_size=image_size)
            if limit_train is not None:
                train_ds = Subset(train_ds, range(min(limit_train, len(train_ds))))
            if limit_test is not None:
                test_ds = Subset(test_ds, range(min(limit_test, len(test_ds))))
            self.train, self.test = train_ds, test_ds
            self.num_train, self.num_test = len(train_ds), len(test_ds)
            self.shape = (3, image_size, image_size)
            stats_mean, stats_std = sm_data.stats("imagefolder")
            self.mean, self.std = list(stats_mean), list(stats_std)
        if self.num_train == 0:
            raise UsageError(f"data: {spec!r} has no training images")

    def model_config(self, arch: str) -> dict:
        """The checkpoint config of a model ``arch`` trained on this data (what
        :func:`supermix.teachers.load_teacher` rebuilds it from)."""
        return {
            "arch": arch, "num_classes": self.num_classes, "in_channels": self.shape[0],
            "data": self.name, "as_cifar": self.as_cifar, "input_size": list(self.shape),
            "mean": self.mean, "std": self.std, "class_names": self.class_names,
        }

    @property
    def real_padding(self) -> int:
        return self.train.padding if self.in_memory else 0

    def stream(self, plan: EpochPlan, index_of, seed: int, epoch: int, rank: int,
               device: torch.device, memory_format: torch.memory_format):
        """(images, int labels) of this rank for every step of ``plan``."""
        if self.in_memory:
            return bank_stream(self.train, self.train_labels, plan, index_of,
                               make_generator(seed, "augment", "real", epoch), device,
                               memory_format)
        return dataset_stream(self.train, plan, index_of, self.workers,
                              make_generator(seed, "loader", epoch, rank), device, memory_format)

    def test_batches(self, info: DistInfo, memory_format: torch.memory_format,
                     batch_size: int = 500):
        """This rank's shard of the test split (images rank, rank + world, ...)."""
        if self.in_memory:
            index = torch.arange(info.rank, self.num_test, info.world)
            for chunk in index.split(batch_size):
                yield (self.test.batch(chunk, None, info.device, memory_format),
                       self.test_labels[chunk])
            return
        from torch.utils.data import DataLoader, Subset

        shard = Subset(self.test, range(info.rank, self.num_test, info.world))
        yield from DataLoader(shard, batch_size=min(batch_size, 256),
                              num_workers=max(0, self.workers))


def _randaugment():
    """torchvision RandAugment (2 ops, magnitude 9: the defaults of the paper's [5])."""
    from torchvision.transforms import v2

    return v2.RandAugment()


def mixed_bank(generated: "GeneratedSet", mean: Sequence[float], std: Sequence[float],
               real_padding: int, randaugment: bool = False) -> ImageBank:
    """The in-memory bank of a generated set: crop with half the real images' padding
    (the original code: 2 pixels for mixed CIFAR images against 4 for real ones) + flip."""
    return ImageBank(generated.images, mean, std, padding=max(real_padding // 2, 0), flip=True,
                     transform=_randaugment() if randaugment else None)


def check_generated(generated: "GeneratedSet", data: LabelledData, num_classes: int) -> None:
    """A generated set must come from the same data set, image shape and class count.

    Raises:
        UsageError: naming the mismatch.
    """
    made_from = generated.data_name
    if made_from and made_from != data.name:
        raise UsageError(f"mixed: {generated.path} was generated from {made_from!r}, but the "
                         f"data is {data.name!r}")
    shape = tuple(int(v) for v in generated.images.shape[1:])
    if shape != tuple(data.shape):
        raise UsageError(f"mixed: {generated.path} holds images of shape {list(shape)}, but "
                         f"the model takes {list(data.shape)}"
                         + (" (Fashion-MNIST as 3x32x32 needs --as-cifar, or a teacher "
                            "trained with it)" if shape[0] == 3 and data.name == "fashion-mnist"
                            else ""))
    if generated.num_classes != num_classes:
        raise UsageError(f"mixed: {generated.path} has labels over {generated.num_classes} "
                         f"classes, the model predicts {num_classes}")


def generated_notes(generated: "GeneratedSet", num_train: int,
                    teacher_path: str | os.PathLike | None = None) -> list[str]:
    """Warnings about a generated set that is usable but maybe not what was meant: drawn from
    more training images than this run labels (``--limit-train``), or made by another teacher."""
    notes = []
    data = generated.manifest.get("data") or {}
    drawn_from = data.get("size")
    if data.get("split", "train") == "train" and drawn_from and int(drawn_from) > num_train:
        notes.append(f"note: {generated.path} was mixed from {drawn_from} training images, this "
                     f"run labels only {num_train}: the mixed images show images beyond "
                     f"--limit-train")
    sha = (generated.manifest.get("teacher") or {}).get("sha256")
    if teacher_path is not None and sha:
        from ..checkpoint import sha256_file

        if sha256_file(teacher_path) != sha:
            notes.append(f"note: {generated.path} was made with another teacher "
                         f"({(generated.manifest.get('teacher') or {}).get('path')})")
    return notes


