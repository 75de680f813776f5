"""The images a generation mixes: a split (or part of it) as normalised batches on a device."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from .. import data as sdata
from ..errors import UsageError

__all__ = ["ImageSource", "subset_indices"]


def subset_indices(limit: int | str | None, size: int) -> tuple[torch.Tensor | None, str | None]:
    """``(indices into the split, sha256 of an index file)`` for ``--limit``: None for the whole
    split, the first N for an int, the listed ones (whitespace-separated, ``#`` comments) for a
    file.

    Raises:
        UsageError: N larger than the split, or a file with bad, repeated or out-of-range
            indices.
    """
    if limit is None:
        return None, None
    if isinstance(limit, int):
        if limit > size:
            raise UsageError(f"limit: the split has {size} images, got {limit}")
        return torch.arange(limit), None
    text = Path(limit).read_text()
    words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
    try:
        values = [int(w) for w in words]
    except ValueError:
        raise UsageError(f"limit: {limit} must hold integer indices") from None
    bad = [v for v in values if not 0 <= v < size]
    if not values or bad or len(set(values)) != len(values):
        raise UsageError(f"limit: {limit} must list distinct indices in 0..{size - 1}"
                         + (f", got {bad[:3]}" if bad else ""))
    digest = hashlib.sha256(" ".join(map(str, values)).encode()).hexdigest()
    return torch.tensor(values, dtype=torch.int64), digest


class ImageSource:
    """The data split as normalised float batches on a device, fetched by index.

    ``subset``: the split indices to draw from (None: all); :meth:`split_index` maps a
    position in the source back to the split, which is what a shard's ``sources`` store.
    ``image_size``: the side ImageFolder images are resized and centre-cropped to (the test-time
    transform the teacher was evaluated with); the other data sets have their own size.
    """

    def __init__(self, spec: str, root: str | None, train: bool, as_cifar: bool,
                 mean: Sequence[float], std: Sequence[float], device: torch.device,
                 subset: torch.Tensor | None = None,
                 image_size: int = sdata.IMAGEFOLDER_IMAGE_SIZE):
        self.name, self.root = sdata.parse_spec(spec, root)
        self.device = device
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.images: torch.Tensor | None = None
        self.dataset = None
        self.repeat = 0
        self.subset = subset
        if self.name == "imagefolder":
            from torchvision.transforms import v2
            tf = sdata.eval_transform(self.name, image_size)
            # The eval transform normalises; keep pixel space here and normalise below.
            tf = v2.Compose([t for t in tf.transforms if not isinstance(t, v2.Normalize)])
            self.dataset = sdata.build_dataset(spec, train=train, root=root, transform=tf)
            first = self.dataset[0][0]
            self.shape = tuple(first.shape)
        else:
            self.images, _ = sdata.load_uint8(spec, train=train, root=root, as_cifar=as_cifar)
            self.shape = tuple(self.images.shape[1:])
            if as_cifar and self.shape[0] == 1:
                self.repeat = 3
                self.shape = (3,) + self.shape[1:]

    @property
    def split_size(self) -> int:
        """Images in the whole split."""
        return len(self.dataset) if self.dataset is not None else self.images.shape[0]

    def __len__(self) -> int:
        return self.split_size if self.subset is None else int(self.subset.numel())

    def split_index(self, index: torch.Tensor) -> torch.Tensor:
        """Positions in this source -> indices into the split."""
        return index if self.subset is None else self.subset[index]

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Images [b,C,H,W] float32 in [0, 1] on the CPU."""
        index = self.split_index(index)
        if self.dataset is not None:
            return torch.stack([self.dataset[int(i)][0] for i in index]).float()
        x = self.images[index].float().div_(255)
        if self.repeat:
            x = x.expand(-1, self.repeat, -1, -1)
        return x.contiguous()

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised images [b,C,H,W] float32 on the device."""
        x = self.pixels(index).to(self.device)
        return (x - self.mean.to(self.device)) / self.std.to(self.device)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation of :meth:`batch`, clamped to [0, 1]."""
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp_(0.0, 1.0)
