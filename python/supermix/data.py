"""Data sets, normalisation and augmentation.

Data specs name a data set and, after a colon, where it lives:

====================  =========================================================================
``fashion-mnist``     Fashion-MNIST idx ``.gz`` files in /usr/share/datasets/fashion-mnist
                      (Debian/Ubuntu package ``dataset-fashion-mnist``): the offline default.
``fashion-mnist:DIR`` the same four files in DIR (``.gz`` or unpacked, or torchvision's
                      ``DIR/FashionMNIST/raw`` layout).
``cifar10:DIR``       CIFAR-10 in torchvision's layout (``DIR/cifar-10-batches-py``).
``cifar100:DIR``      CIFAR-100 in torchvision's layout (``DIR/cifar-100-python``).
``imagefolder:DIR``   any ImageFolder tree; ``DIR/train`` and ``DIR/val`` (or ``DIR/test``)
                      when present, else DIR itself for both splits.
====================  =========================================================================

Nothing is downloaded unless ``download=True`` is passed (CIFAR only).

Two ways to feed a model:

* :func:`build_dataset` gives a ``torch.utils.data.Dataset`` with per-sample torchvision (v2)
  transforms, for a ``DataLoader``.
* :func:`load_uint8` keeps a whole split as one uint8 tensor in memory, for
  :class:`supermix.training.ImageBank`, which augments whole batches at once (random crop with
  zero padding, horizontal flip). On a CPU this is many times faster than per-sample PIL
  transforms for 28x28 / 32x32 images.
  :func:`load_tensors` returns a whole split as normalised float tensors, for the solver and demo.
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import MissingFileError, UsageError

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "IMAGEFOLDER_IMAGE_SIZE",
    "DATASET_STATS",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "FashionMNIST",
    "read_idx",
    "load_fashion_mnist",
    "parse_spec",
    "resolved_spec",
    "build_dataset",
    "load_uint8",
    "load_tensors",
    "num_classes",
    "class_names",
    "image_shape",
    "stats",
    "normalize",
    "denormalize",
    "train_transform",
    "eval_transform",
]

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# The side of ImageFolder crops when neither --image-size nor a teacher's input_size says.
IMAGEFOLDER_IMAGE_SIZE = 224

# (mean, std) per channel of the training split, on images scaled to [0, 1].
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Fine labels in the order of the data set's meta file (alphabetical).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

_ALIASES = {
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100",
    "imagefolder": "imagefolder",
}
_SPEC_HELP = ("'fashion-mnist', 'fashion-mnist:DIR', 'cifar10:DIR', 'cifar100:DIR' "
              "or 'imagefolder:DIR'")


# ----------------------------------------------------------------------------------------------
# Specs


def parse_spec(spec: str, root: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """Split a data spec into (canonical name, root or None). ``root``, when given, wins.

    >>> parse_spec("fashion-mnist")
    ('fashion-mnist', None)
    >>> parse_spec("cifar100:/data/cifar")
    ('cifar100', '/data/cifar')
    """
    if not isinstance(spec, str) or not spec:
        raise UsageError(f"data spec: expected {_SPEC_HELP}, got {spec!r}")
    name, sep, spec_root = spec.partition(":")
    canonical = _ALIASES.get(name.strip().lower())
    if canonical is None:
        raise UsageError(f"data spec: expected {_SPEC_HELP}, got {spec!r}")
    chosen = os.fspath(root) if root is not None else (spec_root if sep and spec_root else None)
    if canonical in ("cifar10", "cifar100", "imagefolder") and chosen is None:
        raise UsageError(
            f"data spec: {canonical!r} needs a folder, e.g. '{canonical}:/path/to/data' "
            f"(or --data-root), got {spec!r}")
    return canonical, chosen


def resolved_spec(spec: str, root: str | os.PathLike | None = None) -> str:
    """``name:folder`` with the folder resolved (symlinks, ``..``), and plain ``name`` for
    Fashion-MNIST's default folder, so two specs of the same files compare equal:
    ``fashion-mnist`` and ``fashion-mnist:/usr/share/datasets/fashion-mnist`` both give
    ``fashion-mnist``."""
    name, folder = parse_spec(spec, root)
    if folder is None:
        return name
    folder = os.path.realpath(os.fspath(folder))
    if name == "fashion-mnist" and folder == os.path.realpath(DEFAULT_FASHION_MNIST_ROOT):
        return name
    return f"{name}:{folder}"


def num_classes(spec: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes of the data set a spec names (an ImageFolder tree is read)."""
    name, folder = parse_spec(spec, root)
    if name == "fashion-mnist" or name == "cifar10":
        return 10
    if name == "cifar100":
        return 100
    return len(class_names(spec, root))


def class_names(spec: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Class names in label order (ImageFolder: its sorted subfolder names)."""
    name, folder = parse_spec(spec, root)
    if name == "fashion-mnist":
        return FASHION_MNIST_CLASSES
    if name == "cifar10":
        return CIFAR10_CLASSES
    if name == "cifar100":
        return CIFAR100_CLASSES
    split = _imagefolder_split(folder, train=True)
    return tuple(sorted(e.name for e in os.scandir(split) if e.is_dir()))


def image_shape(spec: str, as_cifar: bool = False) -> tuple[int, int, int]:
    """(C, H, W) of the images a model sees for this spec (ImageFolder: 224x224 crops)."""
    name, _ = parse_spec(spec, root="")
    if name == "fashion-mnist":
        return (3, 32, 32) if as_cifar else (1, 28, 28)
    if name in ("cifar10", "cifar100"):
        return (3, 32, 32)
    return (3, IMAGEFOLDER_IMAGE_SIZE, IMAGEFOLDER_IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------
# Normalisation


def stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a data set name or spec; ImageFolder trees use the ImageNet values."""
    key = name.partition(":")[0].strip().lower()
    key = _ALIASES.get(key, key)
    if key == "imagefolder":
        key = "imagenet"
    if key not in DATASET_STATS:
        raise UsageError(f"name: expected one of {sorted(DATASET_STATS)}, got {name!r}")
    return DATASET_STATS[key]


def _stat_tensors(name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = stats(name)
    dtype = like.dtype if like.is_floating_point() else torch.float32
    shape = (-1, 1, 1)
    return (torch.tensor(mean, dtype=dtype, device=like.device).view(shape),
            torch.tensor(std, dtype=dtype, device=like.device).view(shape))


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """(x - mean) / std per channel. images: float [..., C, H, W] in [0, 1].

    One-channel statistics (Fashion-MNIST) broadcast over 3 channels (the ``as_cifar`` view).
    """
    mean, std = _stat_tensors(name, images)
    return (images - mean) / std


_normalize = normalize  # load_tensors has an argument of the same name


def denormalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """Inverse of :func:`normalize`: x * std + mean, back to [0, 1] (not clamped)."""
    mean, std = _stat_tensors(name, images)
    return images * std + mean


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST from idx files

_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _missing_fmnist(root: Path, what: str) -> MissingFileError:
    return MissingFileError(
        f"Fashion-MNIST not found: {what} in {root}. Install it with "
        f"'apt-get install dataset-fashion-mnist' (files go to {DEFAULT_FASHION_MNIST_ROOT}), "
        f"or pass the folder holding the four idx files with --data-root DIR "
        f"or the spec 'fashion-mnist:DIR'")


def _find_idx(root: Path, stem: str) -> Path:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    raise _missing_fmnist(root, f"no {stem}.gz")


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Parse one idx file (gzip-compressed or not) into a tensor of its stored dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise MissingFileError(f"cannot read idx file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise MissingFileError(f"{path} is not an idx file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=header)
    if array.size != int(np.prod(shape)):
        raise MissingFileError(
            f"{path} is truncated: header says {shape}, found {array.size} values")
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True).reshape(shape))


@functools.lru_cache(maxsize=4)
def _fashion_mnist_cached(root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    root_path = Path(root)
    if not root_path.is_dir():
        raise _missing_fmnist(root_path, "folder does not exist")
    image_stem, label_stem = _FMNIST_FILES[train]
    images = read_idx(_find_idx(root_path, image_stem))
    labels = read_idx(_find_idx(root_path, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise MissingFileError(
            f"Fashion-MNIST in {root}: expected images [N, 28, 28] and labels [N], "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    return images.unsqueeze(1), labels.long()


def load_fashion_mnist(root: str | os.PathLike | None = None,
                       train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST split as (images uint8 [N, 1, 28, 28], labels int64 [N]).

    The tensors are cached and shared between callers: do not modify them in place.
    """
    root = os.fspath(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
    return _fashion_mnist_cached(os.path.abspath(root), bool(train))


def _as_cifar(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> [N, 1, 32, 32], zero-padded by 2 (black, like the background)."""
    return F.pad(images, (2, 2, 2, 2))


class FashionMNIST(Dataset):
    """Fashion-MNIST, held in memory as one uint8 tensor.

    Args:
        root: folder with the idx files; default /usr/share/datasets/fashion-mnist.
        train: the 60000-image training split, else the 10000-image test split.
        transform: called on the image as a uint8 tensor [C, H, W] (torchvision v2 transforms
            accept these). Without one, the image is returned as float32 in [0, 1].
        as_cifar: present images as 3 x 32 x 32 (zero-pad by 2, repeat the channel) so that
            networks built for CIFAR run unchanged.

    Items: (image tensor [C, H, W], int label).
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 transform: Callable | None = None, as_cifar: bool = False):
        images, labels = load_fashion_mnist(root, train)
        self.root = os.fspath(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
        self.train = train
        self.as_cifar = as_cifar
        self.transform = transform
        self.images = _as_cifar(images) if as_cifar else images
        self.labels = labels
        self._label_list = labels.tolist()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.as_cifar:
            image = image.expand(3, -1, -1)
        if self.transform is not None:
            image = self.transform(image)
        else:
            image = image.float().div_(255)
        return image, self._label_list[index]


# ----------------------------------------------------------------------------------------------
# Whole splits as tensors


def _cifar_class(name: str):
    from torchvision import datasets
    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def _cifar(name: str, root: str, train: bool, transform: Callable | None, download: bool):
    cls = _cifar_class(name)
    if not download:
        folder = Path(root) / cls.base_folder
        if not folder.is_dir():
            raise MissingFileError(
                f"{name} not found: no {cls.base_folder} in {root} (torchvision layout). "
                f"Point the spec at the folder that contains it, or pass download=True "
                f"(--download) to fetch it")
    try:
        return cls(root, train=train, transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise MissingFileError(f"{name} in {root}: {e}") from e


def load_uint8(spec: str, train: bool = True, root: str | os.PathLike | None = None,
               as_cifar: bool = False, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images uint8 [N, C, H, W], labels int64 [N]), kept in memory.

    Fashion-MNIST gives [N, 1, 28, 28] ([N, 1, 32, 32] zero-padded with ``as_cifar``: repeat the
    channel after augmentation, as :class:`supermix.training.ImageBank` does); CIFAR gives
    [N, 3, 32, 32].
    ImageFolder trees have no fixed size: use :func:`build_dataset`.
    """
    name, folder = parse_spec(spec, root)
    if name == "fashion-mnist":
        images, labels = load_fashion_mnist(folder, train)
        return (_as_cifar(images) if as_cifar else images), labels
    if name in ("cifar10", "cifar100"):
        ds = _cifar(name, folder, train, None, download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.long)
    raise UsageError(f"spec: load_uint8 needs a fixed-size data set "
                     f"(fashion-mnist, cifar10, cifar100), got {spec!r}; use build_dataset")


def load_tensors(name: str = "fashion-mnist", train: bool = False,
                 root: str | os.PathLike | None = None, as_cifar: bool = False,
                 normalize: bool = True, limit: int | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images float32 [N, C, H, W], labels int64 [N]).

    Images are normalised with the data set's mean/std (``normalize=False``: in [0, 1]).
    ``as_cifar`` gives Fashion-MNIST as 3 x 32 x 32. ``limit`` keeps the first ``limit`` images.
    """
    images, labels = load_uint8(name, train, root, as_cifar)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.float().div_(255)
    if as_cifar and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    if normalize:
        x = _normalize(x, parse_spec(name, root)[0])
    return x, labels.clone()


# ----------------------------------------------------------------------------------------------
# Per-sample transforms and Dataset objects


def train_transform(spec: str, as_cifar: bool = False, randaugment: bool = False,
                    image_size: int = IMAGEFOLDER_IMAGE_SIZE) -> Callable:
    """Training augmentation for one image (PIL or uint8 tensor [C, H, W]) -> normalised float.

    Fashion-MNIST: random crop (padding 2 at 28x28, 4 at 32x32) + horizontal flip.
    CIFAR: random crop 32 with padding 4 + horizontal flip. ImageFolder: RandomResizedCrop
    (``image_size``) + flip, ImageNet statistics. ``randaugment`` adds torchvision's RandAugment
    (default magnitude 9, 2 ops) before the conversion to float.
    """
    from torchvision.transforms import v2

    name, _ = parse_spec(spec, root="")
    ops: list = [v2.ToImage()]
    if name == "imagefolder":
        ops += [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    elif name == "fashion-mnist" and not as_cifar:
        ops += [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()]
    else:
        ops += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if randaugment:
        ops.append(v2.RandAugment())
    mean, std = stats(name)
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def eval_transform(spec: str, image_size: int = IMAGEFOLDER_IMAGE_SIZE) -> Callable:
    """Test-time transform: ImageFolder resizes to image_size / 0.875 and center-crops."""
    from torchvision.transforms import v2

    name, _ = parse_spec(spec, root="")
    ops: list = [v2.ToImage()]
    if name == "imagefolder":
        ops += [v2.Resize(int(round(image_size / 0.875)), antialias=True),
                v2.CenterCrop(image_size)]
    mean, std = stats(name)
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def _imagefolder_split(root: str, train: bool) -> Path:
    base = Path(root)
    if not base.is_dir():
        raise MissingFileError(f"imagefolder: folder {root} does not exist")
    names = ("train",) if train else ("val", "test")
    for sub in names:
        if (base / sub).is_dir():
            return base / sub
    return base


def build_dataset(spec: str, train: bool = True, root: str | os.PathLike | None = None,
                  transform: Callable | None = None, augment: bool = True,
                  randaugment: bool = False, as_cifar: bool = False, download: bool = False,
                  image_size: int = IMAGEFOLDER_IMAGE_SIZE) -> Dataset:
    """A Dataset of (normalised float image [C, H, W], int label) for a data spec.

    ``transform`` replaces the default, which is :func:`train_transform` for the training split
    (when ``augment``) and :func:`eval_transform` otherwise. ``root`` overrides the spec's folder.
    ``download`` lets torchvision fetch CIFAR; nothing else is ever downloaded.
    """
    name, folder = parse_spec(spec, root)
    if transform is None:
        transform = (train_transform(name, as_cifar, randaugment, image_size)
                     if train and augment else eval_transform(name, image_size))
    if name == "fashion-mnist":
        return FashionMNIST(folder, train, transform, as_cifar)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, folder, train, transform, download)
    from torchvision import datasets
    split = _imagefolder_split(folder, train)
    try:
        return datasets.ImageFolder(os.fspath(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise MissingFileError(f"imagefolder:{folder}: {e}") from e

