"""The mixed-set reader: the manifest checked against its shards, every shard's hash verified,
and the set read one sample at a time (:class:`MixedDataset`) or all at once
(:func:`load_mixed_set`)."""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..checkpoint import sha256_file
from ..errors import MissingFileError, UsageError
from .format import (LABELS, MANIFEST, CorruptShardError, ManifestError, check_shard_data,
                     differing_keys, read_manifest, read_shard_info, shard_name)

__all__ = ["check_manifest", "verify_mixed_set", "MixedDataset", "GeneratedSet",
           "load_mixed_set"]

_ENTRY_KEYS = {"file": str, "shard": int, "count": int, "sha256": str}


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(root: str | os.PathLike, manifest: dict) -> list[dict]:
    """Check the manifest against itself and the settings it records, without opening a
    shard: the keys a reader needs, each entry's file name ``shard-<number>``, shard numbers
    0..shard_count-1 each once (of a finished set; an unfinished one: each at most once), the
    counts against the quotas of ``size`` and ``shard_size`` and the totals. Returns the
    entries.

    Raises:
        ManifestError: naming the entry and what is wrong.
    """
    where = f"generated set {root}: {MANIFEST}"

    def fail(message: str):
        raise ManifestError(f"{where}: {message}; regenerate the set (or restore its manifest)")

    shards = manifest.get("shards")
    if not isinstance(shards, list):
        fail("lacks the 'shards' list")
    data = manifest.get("data")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("mean", "std")):
        fail("lacks 'data' with 'mean' and 'std'")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            fail(f"entry {i} is not an object")
        for key, kind in _ENTRY_KEYS.items():
            if key not in entry:
                fail(f"entry {i} lacks {key!r}")
            if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
                fail(f"entry {i} has {key}={entry[key]!r}, expected {kind.__name__}")
        if entry["file"] != shard_name(entry["shard"]):
            fail(f"entry {i} names file {entry['file']!r} for shard {entry['shard']}")
        if entry["count"] < 0:
            fail(f"entry {i} has count {entry['count']}")
    numbers = [e["shard"] for e in shards]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        fail(f"lists shard {twice[0]} more than once")
    if numbers != sorted(numbers):
        fail(f"lists the shards out of order ({numbers[:8]}...)")
    shard_count = manifest.get("shard_count")
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    size, shard_size = config.get("size"), config.get("shard_size")
    quotas = None
    if _int(size) and _int(shard_size) and shard_size > 0:
        quotas = [min(shard_size, size - j * shard_size) for j in range(-(-size // shard_size))]
        if shard_count is not None and shard_count != len(quotas):
            fail(f"says shard_count {shard_count!r}, but size {size} in shards of {shard_size} "
                 f"makes {len(quotas)}")
        shard_count = len(quotas)
    if manifest.get("complete"):
        if not _int(shard_count):
            fail("lacks 'shard_count'")
        missing = sorted(set(range(shard_count)) - set(numbers))
        if missing:
            fail(f"is marked complete but does not list shard {missing[0]} "
                 f"({len(shards)} of {shard_count} shards)")
    if _int(shard_count):
        extra = [n for n in numbers if not 0 <= n < shard_count]
        if extra:
            fail(f"lists shard {extra[0]}, beyond its {shard_count} shards")
    if quotas is not None:
        for e in shards:
            if e["count"] != quotas[e["shard"]]:
                fail(f"says shard {e['shard']} holds {e['count']} samples, but the settings "
                     f"give it {quotas[e['shard']]}")
    kept = (manifest.get("totals") or {}).get("kept") if isinstance(manifest.get("totals"),
                                                                     dict) else None
    total = sum(e["count"] for e in shards)
    if kept is not None and manifest.get("complete") and kept != total:
        fail(f"totals say {kept} samples, the shards {total}")
    if quotas is not None and manifest.get("complete") and total != size:
        fail(f"lists {total} samples, the settings {size}")
    return shards


def _check_shard_header(root: Path, entry: dict, config: dict | None) -> None:
    """A shard's own header agrees with its manifest entry (number, count, rows, settings, and
    its tensor bytes with its data_sha256)."""
    path = root / entry["file"]
    info = read_shard_info(path)
    name = f"generated set {root}: shard {entry['file']}"
    if info is None:
        raise CorruptShardError(f"{name} is not a readable supermix shard (or its tensors do "
                                f"not hold the rows its header says)")
    if info["shard"] != entry["shard"] or info["count"] != entry["count"]:
        raise CorruptShardError(
            f"{name} holds {info['count']} samples of shard {info['shard']}, the manifest says "
            f"{entry['count']} of shard {entry['shard']}")
    if config is not None and info.get("config") != config:
        keys = differing_keys(info.get("config") or {}, config)
        raise CorruptShardError(f"{name} was generated with other settings than the manifest's: "
                                f"{', '.join(keys[:5])}")
    if "data_sha256" in info:
        problem = check_shard_data(path, info)
        if problem is not None:
            raise CorruptShardError(f"{name} is corrupt: {problem}")


def verify_mixed_set(root: str | os.PathLike, manifest: dict | None = None) -> int:
    """Check the manifest (:func:`check_manifest`) and every shard it lists: its sha256
    against the manifest's, its header against the entry and the manifest's settings. Returns
    the shard count.

    Raises:
        ManifestError: a malformed manifest or one that disagrees with its settings.
        CorruptShardError: naming the first missing, corrupt or mismatched shard file.
    """
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    if manifest is None:
        raise MissingFileError(f"generated set: no {MANIFEST} in {root}")
    entries = check_manifest(root, manifest)
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else None
    for entry in entries:
        path = root / entry["file"]
        if not path.is_file():
            raise CorruptShardError(f"generated set {root}: shard {entry['file']} is missing")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise CorruptShardError(
                f"generated set {root}: shard {entry['file']} is corrupt "
                f"(sha256 {got[:16]}..., manifest says {entry['sha256'][:16]}...)")
        _check_shard_header(root, entry, config)
    return len(entries)


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
        ManifestError: the manifest is malformed or disagrees with its settings (always
            checked: a dropped, duplicated or edited entry is named).
        CorruptShardError: with ``verify``, a missing, corrupt or mismatched shard (named).
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
                f"({len(manifest.get('shards') or [])} of {manifest.get('shard_count')} shards); "
                f"rerun the same 'supermix generate' command to finish it")
        check_manifest(self.root, manifest)
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
        verify_mixed_set(self.root, self.manifest)

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


@dataclass
class GeneratedSet:
    """A set written by ``supermix generate``, read into memory.

    images: [n,C,H,W] uint8 (or float16 pixels in [0, 1]); y_hat, teacher_probs: float32
    [n,classes]; manifest: the parsed manifest.json.
    """

    path: Path
    images: torch.Tensor
    y_hat: torch.Tensor
    teacher_probs: torch.Tensor
    manifest: dict

    @property
    def data_name(self) -> str:
        from ..data import parse_spec

        spec = (self.manifest.get("data") or {}).get("spec") or \
            (self.manifest.get("config") or {}).get("data", "")
        return parse_spec(str(spec).split(":", 1)[0], root="")[0] if spec else ""

    @property
    def num_classes(self) -> int:
        return int(self.y_hat.shape[1])


def load_mixed_set(path: str | os.PathLike, limit: int | None = None,
                   verify: bool = True) -> GeneratedSet:
    """Read a generated set (all shards) into memory, optionally only its first ``limit`` images.

    Raises:
        MissingFileError: no folder or no manifest; UsageError: an unfinished or corrupt set.
    """
    root = Path(path)
    if not root.is_dir():
        raise MissingFileError(f"mixed: no folder at {root}")
    ds = MixedDataset(root, verify=verify)
    if len(ds) == 0:
        raise UsageError(f"mixed: the generated set in {root} is empty")
    images = ds.read_field("mixed")
    y_hat = ds.read_field("y_hat").float()
    probs = ds.read_field("teacher_probs").float()
    if limit is not None:
        images, y_hat, probs = images[:limit], y_hat[:limit], probs[:limit]
    return GeneratedSet(root, images.contiguous(), y_hat, probs, ds.manifest)
