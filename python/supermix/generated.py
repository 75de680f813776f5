"""Reading a set written by ``supermix generate``: :class:`MixedDataset`.

The shards are memory-mapped through ``safetensors.safe_open``; one sample is read at a time, so
a set far larger than memory trains from disk. The file handles are opened lazily per process
(and dropped when the dataset is pickled), so a ``DataLoader`` with worker processes works.
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .errors import MissingFileError, UsageError
from .generate import MANIFEST, read_manifest, sha256_file

__all__ = ["MixedDataset", "CorruptShardError", "LABELS", "verify_generated"]

LABELS = ("teacher_probs", "y_hat")


class CorruptShardError(UsageError):
    """A shard of a generated set is missing or its bytes differ from the manifest's sha256."""


def verify_generated(root: str | os.PathLike, manifest: dict | None = None) -> int:
    """Check every shard listed in the manifest against its sha256; returns the shard count.

    Raises:
        CorruptShardError: naming the first missing or corrupt shard file.
    """
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    if manifest is None:
        raise MissingFileError(f"generated set: no {MANIFEST} in {root}")
    for entry in manifest["shards"]:
        path = root / entry["file"]
        if not path.is_file():
            raise CorruptShardError(f"generated set {root}: shard {entry['file']} is missing")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise CorruptShardError(
                f"generated set {root}: shard {entry['file']} is corrupt "
                f"(sha256 {got[:16]}..., manifest says {entry['sha256'][:16]}...)")
    return len(manifest["shards"])


class MixedDataset(Dataset):
    """A generated mixed set as a ``Dataset`` of (image, soft label).

    Args:
        root: the folder ``supermix generate --out`` wrote.
        verify: check every shard's sha256 at construction (see :meth:`verify`).
        label: ``"teacher_probs"`` (the teacher's softmax on the mixed image: the distillation
            target) or ``"y_hat"`` (the solver's target sum_i r_i onehot(y_i)). Both [classes]
            float32 summing to 1.
        normalize: return images normalised with the set's mean/std (as the teacher saw them)
            instead of in [0, 1].
        transform: optional callable applied to the image tensor.
        allow_incomplete: read the finished shards of a set whose generation has not finished.

    Items: (image float32 [C,H,W], label float32 [classes]).

    Raises:
        MissingFileError: no manifest in ``root``.
        UsageError: the set is incomplete (and ``allow_incomplete`` is False), bad ``label``.
        CorruptShardError: with ``verify``, a missing or corrupt shard (named).
    """

    def __init__(self, root: str | os.PathLike, verify: bool = True, label: str = "teacher_probs",
                 normalize: bool = False, transform=None, allow_incomplete: bool = False):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise MissingFileError(f"generated set: no {MANIFEST} in {self.root}")
        if label not in LABELS:
            raise UsageError(f"label: expected one of {list(LABELS)}, got {label!r}")
        if not manifest.get("complete") and not allow_incomplete:
            raise UsageError(
                f"generated set {self.root}: generation has not finished "
                f"({len(manifest['shards'])} of {manifest.get('shard_count')} shards); rerun the "
                f"same 'supermix generate' command to finish it")
        self.manifest = manifest
        self.label = label
        self.normalize = normalize
        self.transform = transform
        self.shards = [e["file"] for e in manifest["shards"]]
        counts = [int(e["count"]) for e in manifest["shards"]]
        self.offsets = [0]
        for c in counts:
            self.offsets.append(self.offsets[-1] + c)
        data = manifest["data"]
        self.mean = torch.tensor(data["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(data["std"], dtype=torch.float32).view(-1, 1, 1)
        self.class_names = list(data.get("class_names") or [])
        self._handles: dict[int, Any] = {}
        if verify:
            self.verify()

    # -- pickling for DataLoader workers: handles are per process
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest.

        Raises:
            CorruptShardError: naming the missing or corrupt shard file.
        """
        verify_generated(self.root, self.manifest)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _handle(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open
            path = self.root / self.shards[shard]
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as e:  # noqa: BLE001 -- missing or unparsable file
                raise CorruptShardError(
                    f"generated set {self.root}: cannot read shard {self.shards[shard]}: {e}") from e
            self._handles[shard] = handle
        return handle

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number in the manifest's list, row inside it) of a sample."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def field(self, name: str, index: int) -> torch.Tensor:
        """One stored tensor of one sample (e.g. ``"mask_logits"``, ``"sources"``, ``"r"``)."""
        shard, row = self.locate(index)
        return self._handle(shard).get_slice(name)[row:row + 1][0]

    def read_field(self, name: str) -> torch.Tensor:
        """A stored tensor over the whole set, concatenated in sample order."""
        return torch.cat([self._handle(i).get_tensor(name) for i in range(len(self.shards))])

    def has_field(self, name: str) -> bool:
        return bool(self.shards) and name in self._handle(0).keys()

    def image(self, index: int) -> torch.Tensor:
        """Mixed image float32 [C,H,W], in [0, 1] (or normalised with ``normalize``)."""
        mixed = self.field("mixed", index)
        image = mixed.float().div_(255) if mixed.dtype == torch.uint8 else mixed.float()
        if self.normalize:
            image = (image - self.mean) / self.std
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.field(self.label, index).float()
