"""The mixed-set format: shards, manifest, writer and reader, in one place.

A mixed set is what ``supermix generate`` writes and the training commands read.
:func:`write_shard`, :func:`write_manifest` and the resume helpers (:func:`finished_shards`,
:func:`clean_temporaries`) write it; :class:`MixedDataset` reads it one sample at a time from
memory-mapped shards and :func:`load_mixed_set` all at once into memory; :func:`verify_mixed_set`
checks every shard against the manifest's sha256.

Files in a set's folder (DESIGN.md, "Files and formats"):

``shard-00000.safetensors`` ...
    ``mixed``          [n,C,H,W] uint8 (de-normalised to pixel space and rounded) or float16
                       in [0, 1] (``store="float16"``), pixel space either way;
    ``sources``        [n,k] int64 indices into the data set split;
    ``r``              [n,k] float32 mixing weights (eq. 2; CutMix: the covered fractions);
    ``y_hat``          [n,classes] float32 target soft label sum_i r_i onehot(y_i), with y_i the
                       teacher's label of source i;
    ``teacher_probs``  [n,classes] float32 teacher softmax on the (float) mixed image;
    ``mask_logits``    [n,k,h,w] float32 (SuperMix only; absent for the blind mixers);
    ``iters``          [n] int64 solver iterations; ``success`` [n] bool.
    The safetensors header metadata holds the shard number, its counts, the settings (seed
    included) and ``data_sha256``, the sha256 of the tensor bytes after the header, and no
    timing, so that a shard's bytes (and its sha256) depend on nothing but the settings, and a
    shard can be checked without the manifest (:func:`check_shard_data`).
``manifest.json``
    settings (every argument, the preset and its values), seed, data spec and size, teacher path
    and sha256, the shard list (file, count, sha256, statistics) and the totals: generated,
    kept, failed dropped, success rate, mean iterations, images per second.
``png/00000000.png`` ...
    with ``export_png``: every kept mixed image, named by its global sample number.

Every file is written to a temporary file in the same folder and ``os.replace``d into place, so a
process killed at any moment (``kill -9``) leaves finished files or none. A rerun with the same
command verifies the finished shards (sha256 against the manifest; a shard missing from the
manifest because the run died between the two writes is accepted from its header), deletes the
temporary files and generates only the missing shards (a shard the manifest does not list is
kept only if its bytes match its own header's ``data_sha256``). A manifest or shard written with
other settings is an error naming the differing keys, unless ``overwrite``.

Readers check the manifest against the shards (:func:`check_manifest`, always: required keys,
shard numbers 0..n-1 each once, file names, counts against the settings' quotas and the total;
with ``verify``: every shard's sha256, and its header's number, count, rows and settings), so a
dropped, duplicated or edited entry is a one-line :class:`ManifestError`, never fewer samples
or an ``IndexError``.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .checkpoint import atomic_write_bytes, atomic_write_text, sha256_file
from .errors import MissingFileError, UsageError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PNG_DIR",
    "LABELS",
    "shard_name",
    "read_manifest",
    "write_manifest",
    "differing_keys",
    "describe_diff",
    "ShardStats",
    "to_stored",
    "shard_info",
    "shard_entry",
    "write_shard",
    "read_shard_info",
    "write_pngs",
    "check_out_dir",
    "clean_temporaries",
    "remove_set",
    "finished_shards",
    "totals",
    "CorruptShardError",
    "ManifestError",
    "check_shard_data",
    "check_manifest",
    "verify_mixed_set",
    "MixedDataset",
    "GeneratedSet",
    "load_mixed_set",
]

FORMAT = "supermix-generated"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PNG_DIR = "png"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")


def shard_name(j: int) -> str:
    """File name of shard j."""
    return f"shard-{j:05d}.safetensors"


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of a generated folder, or None when there is none.

    Raises:
        UsageError: the file exists but is not a supermix manifest.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"manifest: {path} is unreadable or not JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"manifest: {path} is not a {FORMAT} manifest")
    return manifest


def differing_keys(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def describe_diff(old: dict, new: dict, keys: list[str]) -> str:
    return ", ".join(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in keys)


@dataclass
class ShardStats:
    generated: int = 0
    successes: int = 0
    iters_sum: int = 0
    failed_dropped: int = 0
    surplus_dropped: int = 0
    batches: int = 0
    seconds: float = 0.0


def to_stored(pixels: torch.Tensor, store: str) -> torch.Tensor:
    if store == "uint8":
        return pixels.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.to(torch.float16)


def shard_info(j: int, count: int, stats: ShardStats, identity: dict) -> dict:
    """What a shard's header records: deterministic (no timing), so equal settings give equal
    bytes."""
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "shard": j, "count": count,
        "generated": stats.generated, "successes": stats.successes,
        "iters_sum": stats.iters_sum, "failed_dropped": stats.failed_dropped,
        "surplus_dropped": stats.surplus_dropped, "config": identity,
    }


def _header_metadata(info: dict) -> dict[str, str]:
    # One key: safetensors writes the metadata map in hash order, so several keys would make
    # the bytes (and the sha256) of equal shards differ between processes.
    return {"supermix": json.dumps(info, sort_keys=True)}


def shard_entry(path: Path, info: dict, sha: str, seconds: float | None) -> dict:
    return {
        "file": path.name, "shard": int(info["shard"]), "count": int(info["count"]),
        "sha256": sha, "bytes": path.stat().st_size, "generated": int(info["generated"]),
        "successes": int(info["successes"]), "iters_sum": int(info["iters_sum"]),
        "failed_dropped": int(info["failed_dropped"]),
        "surplus_dropped": int(info["surplus_dropped"]), "seconds": seconds,
    }


def write_shard(out_dir: Path, j: int, tensors: dict[str, torch.Tensor], stats: ShardStats,
                identity: dict) -> dict:
    """Write shard j atomically; returns its manifest entry (with its sha256)."""
    from safetensors.torch import save

    info = shard_info(j, tensors["mixed"].shape[0], stats, identity)
    # The tensor bytes do not depend on the metadata: hash them, then write the hash with it.
    info["data_sha256"] = hashlib.sha256(
        _data_section(save(tensors, metadata=_header_metadata(info)))).hexdigest()
    blob = save(tensors, metadata=_header_metadata(info))
    path = out_dir / shard_name(j)
    atomic_write_bytes(blob, path)
    return shard_entry(path, info, hashlib.sha256(blob).hexdigest(), round(stats.seconds, 3))


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_text(_json_text(manifest), out_dir / MANIFEST)



def _data_section(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors blob (after the 8-byte length and the JSON header)."""
    return blob[8 + int.from_bytes(blob[:8], "little"):]


def read_shard_info(path: Path) -> dict | None:
    """The header record of a finished shard, or None if it is not a readable shard (or its
    tensors do not all hold the header's ``count`` rows)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rows = {k: (f.get_slice(k).get_shape() or [None])[0] for k in f.keys()}
        info = json.loads(meta["supermix"])
    except Exception:  # noqa: BLE001 -- any parse error means "not a finished shard"
        return None
    if not isinstance(info, dict) or info.get("format") != FORMAT or "mixed" not in rows:
        return None
    if not isinstance(info.get("count"), int) or not isinstance(info.get("shard"), int) or \
            any(n != info["count"] for n in rows.values()):
        return None
    return info


def check_shard_data(path: Path, info: dict) -> str | None:
    """What is wrong with a shard's tensor bytes against its own header's ``data_sha256``
    (None: nothing): the check that needs no manifest."""
    expected = info.get("data_sha256")
    if not isinstance(expected, str):
        return "its header records no data_sha256"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        while block := f.read(1 << 20):
            h.update(block)
    got = h.hexdigest()
    if got != expected:
        return f"its data sha256 {got[:16]}... differs from its header's {expected[:16]}..."
    return None


def write_pngs(out_dir: Path, first: int, mixed: torch.Tensor) -> None:
    """Each image [C,H,W] as ``png/<global sample number>.png`` (grey for one channel)."""
    import io

    from PIL import Image
    folder = out_dir / PNG_DIR
    folder.mkdir(exist_ok=True)
    images = mixed if mixed.dtype == torch.uint8 else to_stored(mixed.float(), "uint8")
    for i, image in enumerate(images):
        array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        atomic_write_bytes(buf.getvalue(), folder / f"{first + i:08d}.png")


def check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out: cannot write to {out_dir}: {e.strerror or e}") from e


def clean_temporaries(out_dir: Path) -> int:
    removed = 0
    for folder in (out_dir, out_dir / PNG_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_set(out_dir: Path) -> None:
    for entry in out_dir.iterdir():
        if entry.name == MANIFEST or _SHARD_RE.match(entry.name):
            entry.unlink()
    if (out_dir / PNG_DIR).is_dir():
        shutil.rmtree(out_dir / PNG_DIR)
    clean_temporaries(out_dir)


def finished_shards(out_dir: Path, manifest: dict | None, identity: dict, quotas: list[int],
                     mine: list[int], overwrite_hint: str) -> tuple[dict[int, dict], list[str]]:
    """Shards of ``mine`` already on disk and valid, as manifest entries; plus warnings."""
    # Entries are trusted only for their sha256 and timing; a malformed one counts as unlisted.
    listed = {e["shard"]: e for e in (manifest or {}).get("shards", []) or []
              if isinstance(e, dict) and isinstance(e.get("shard"), int)
              and isinstance(e.get("sha256"), str)}
    done: dict[int, dict] = {}
    warnings: list[str] = []
    for j in mine:
        path = out_dir / shard_name(j)
        if not path.is_file():
            continue
        info = read_shard_info(path)
        if info is None:
            warnings.append(f"{path.name}: unreadable, generating it again")
            continue
        config = info.get("config", {})
        if config != identity:
            keys = differing_keys(config, identity)
            raise UsageError(
                f"--out: {path} was generated with other settings: "
                f"{describe_diff(config, identity, keys)}; {overwrite_hint}")
        sha = sha256_file(path)
        entry = listed.get(j)
        if entry is not None and entry.get("sha256") != sha:
            warnings.append(f"{path.name}: sha256 differs from the manifest, generating it again")
            continue
        if entry is None:  # no manifest to vouch for it: its own header must
            problem = check_shard_data(path, info)
            if problem is not None:
                warnings.append(f"{path.name}: not in the manifest and {problem}; generating "
                                f"it again")
                continue
        if int(info["count"]) != quotas[j] or int(info["shard"]) != j:
            warnings.append(f"{path.name}: holds {info['count']} samples of shard "
                            f"{info['shard']}, expected {quotas[j]} of shard {j}; "
                            f"generating it again")
            continue
        seconds = entry.get("seconds") if entry is not None else None
        done[j] = shard_entry(path, info, sha, seconds)
    return done, warnings


def totals(entries: list[dict], size: int, run_seconds: float, run_kept: int,
            previous_speed: float | None = None) -> dict:
    """Totals over the finished shards. ``images_per_s`` is kept samples per wall-clock second
    of this run (of the last run that generated anything, when this one found all done)."""
    generated = sum(e["generated"] for e in entries)
    kept = sum(e["count"] for e in entries)
    return {
        "size": size,
        "shards_done": len(entries),
        "generated": generated,
        "kept": kept,
        "failed_dropped": sum(e["failed_dropped"] for e in entries),
        "surplus_dropped": sum(e["surplus_dropped"] for e in entries),
        "success_rate": (sum(e["successes"] for e in entries) / generated) if generated else None,
        "mean_iters": (sum(e["iters_sum"] for e in entries) / generated) if generated else None,
        "this_run": {"kept": run_kept, "seconds": round(run_seconds, 3),
                     "images_per_s": round(run_kept / run_seconds, 2) if run_seconds > 0 else None},
        "images_per_s": (round(run_kept / run_seconds, 2) if run_seconds > 0 and run_kept
                         else previous_speed),
    }


LABELS = ("teacher_probs", "y_hat")


class CorruptShardError(UsageError):
    """A shard of a generated set is missing or its bytes differ from the manifest's sha256."""


class ManifestError(CorruptShardError):
    """The manifest of a generated set is malformed or disagrees with its shards."""


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
        from .data import parse_spec

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
        raise MissingFileError(f"--mixed: no folder at {root}")
    ds = MixedDataset(root, verify=verify)
    if len(ds) == 0:
        raise UsageError(f"--mixed: the generated set in {root} is empty")
    images = ds.read_field("mixed")
    y_hat = ds.read_field("y_hat").float()
    probs = ds.read_field("teacher_probs").float()
    if limit is not None:
        images, y_hat, probs = images[:limit], y_hat[:limit], probs[:limit]
    return GeneratedSet(root, images.contiguous(), y_hat, probs, ds.manifest)
