"""Teachers: find the checkpoint, load the network, check that it fits the data, describe it.

A teacher is a checkpoint written by ``supermix train-teacher`` (or
:func:`supermix.checkpoint.save_checkpoint`): weights plus a config naming ``arch``,
``num_classes``, ``in_channels`` and usually the data spec, ``input_size`` and the
normalisation ``mean``/``std`` it was trained with. Without a path, the commands use the
ResNet-20 Fashion-MNIST teacher shipped in ``supermix/assets``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as sdata
from .checkpoint import REQUIRED_CONFIG, load_checkpoint
from .errors import MissingFileError, UsageError

__all__ = [
    "DEFAULT_TEACHER",
    "assets_dir",
    "default_teacher_path",
    "locate_teacher",
    "load_teacher",
    "teacher_view",
    "teacher_image_size",
    "check_teacher_fits",
    "load_teacher_for",
    "check_teacher_runs",
    "describe_teacher",
]

DEFAULT_TEACHER = "teacher_resnet20_fmnist.pt"


def assets_dir() -> Path:
    """Folder of the files shipped inside the package (the default teacher and its card).

    The package is installed unzipped, so the folder beside this module is the resource folder
    (``importlib.resources`` would give the same path, but not for a namespace-package checkout).
    """
    return Path(__file__).resolve().parent / "assets"


def default_teacher_path() -> Path:
    """Path of the shipped ResNet-20 Fashion-MNIST teacher (may not exist in a source tree
    where it has not been trained yet; :func:`locate_teacher` then says so)."""
    return assets_dir() / DEFAULT_TEACHER


def locate_teacher(path: str | os.PathLike | None) -> Path:
    """The teacher file ``path`` names (None: the shipped one), which must exist.

    Raises:
        MissingFileError: no such file (for the shipped one: how to train it).
    """
    found = Path(path) if path is not None else default_teacher_path()
    if not found.is_file():
        hint = (" (the shipped teacher is missing: train it with 'supermix train-teacher')"
                if path is None else "")
        raise MissingFileError(f"teacher: no file at {found}{hint}")
    return found


def load_teacher(path: str | os.PathLike | None = None, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the network a checkpoint describes, load its weights, return it in eval mode.

    ``path=None`` loads the shipped default teacher (:func:`default_teacher_path`). The config
    is attached to the module as ``model.supermix_config`` (data spec, normalisation, accuracy).
    """
    from . import models

    path = default_teacher_path() if path is None else Path(path)
    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise MissingFileError(f"checkpoint: {path}: config lacks {missing}")
    model = models.create(config["arch"], num_classes=int(config["num_classes"]),
                          in_channels=int(config["in_channels"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise MissingFileError(f"checkpoint: {path}: weights do not fit {config['arch']!r}: "
                               f"{str(e).splitlines()[0]}") from e
    model.supermix_config = dict(config)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def teacher_view(config: dict, data_name: str) -> bool:
    """Whether the teacher sees Fashion-MNIST as 3x32x32 (trained with ``--as-cifar``, or a
    3-channel 32x32 input size)."""
    size = config.get("input_size")
    return data_name == "fashion-mnist" and (
        bool(config.get("as_cifar")) or (int(config["in_channels"]) == 3 and size is not None
                                         and list(size)[1:] == [32, 32]))


def teacher_image_size(config: dict, default: int = sdata.IMAGEFOLDER_IMAGE_SIZE) -> int:
    """The side of the square images the teacher was trained and evaluated on (``input_size``
    [C, H, W] of its config; ``train-teacher --image-size`` for ImageFolder data), else
    ``default``."""
    size = config.get("input_size")
    return int(list(size)[-1]) if size else default


def check_teacher_fits(path: Path, config: dict, spec: str, root: str | None = None) -> bool:
    """Check that the teacher takes the data's channels and predicts its classes; returns
    whether it sees Fashion-MNIST as 3x32x32 (:func:`teacher_view`).

    Raises:
        UsageError: naming the channel or class mismatch.
    """
    name, _ = sdata.parse_spec(spec, root)
    data_channels = sdata.image_shape(name)[0]
    as_cifar = teacher_view(config, name)
    in_channels = int(config["in_channels"])
    if in_channels != (3 if as_cifar else data_channels):
        raise UsageError(
            f"teacher: {path} takes {in_channels}-channel images, but the data "
            f"{spec!r} has {data_channels} channel(s)")
    classes = sdata.num_classes(spec, root)
    if int(config["num_classes"]) != classes:
        raise UsageError(f"teacher: {path} predicts {config['num_classes']} classes, but the "
                         f"data {spec!r} needs {classes}")
    return as_cifar


def load_teacher_for(path: Path, spec: str, root: str | None, device: torch.device
                     ) -> tuple[nn.Module, bool, list[float], list[float]]:
    """Load the teacher onto ``device`` and check it fits the data; returns (teacher,
    as_cifar, mean, std), the normalisation being the teacher's (else the data set's)."""
    teacher = load_teacher(path, map_location=device)
    config = teacher.supermix_config
    as_cifar = check_teacher_fits(path, config, spec, root)
    mean, std = sdata.stats(sdata.parse_spec(spec, root)[0])
    mean = config.get("mean", mean)
    std = config.get("std", std)
    return teacher, as_cifar, [float(v) for v in mean], [float(v) for v in std]


def check_teacher_runs(teacher: nn.Module, x: torch.Tensor, num_classes: int, path: Path) -> None:
    """Run the teacher on a batch ``x`` [b,C,H,W]; it must return logits [b, num_classes].

    Raises:
        UsageError: the network refuses the images, returns another shape or NaN/inf.
    """
    try:
        with torch.no_grad():
            out = teacher(x)
    except Exception as e:  # noqa: BLE001 -- a shape error inside the network
        raise UsageError(f"teacher: {path} does not accept images of shape "
                         f"{list(x.shape[1:])}: {str(e).splitlines()[0] if str(e) else e}") from e
    if not isinstance(out, torch.Tensor) or list(out.shape) != [x.shape[0], num_classes]:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"teacher: {path} returned {got} for {x.shape[0]} images, "
                         f"expected [{x.shape[0]}, {num_classes}]")
    if not bool(torch.isfinite(out).all()):
        raise UsageError(f"teacher: {path} returned non-finite logits (NaN or inf) on real "
                         f"images; check its weights and the input normalisation")


def describe_teacher(path: Path, teacher: nn.Module, sha256: str) -> dict:
    """What a generated set records about its teacher: path, sha256, arch, class count."""
    config = teacher.supermix_config
    return {"path": str(path.resolve()), "sha256": sha256, "arch": config.get("arch"),
            "num_classes": int(config["num_classes"])}
