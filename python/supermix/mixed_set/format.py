"""The mixed-set format's names and the checks both sides share: file names, the manifest's
reader, a shard's header record and its data hash, and the errors a bad set raises."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import UsageError

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "PNG_DIR", "LABELS", "shard_name",
           "is_shard_name", "read_manifest", "differing_keys", "describe_diff",
           "read_shard_info", "check_shard_data", "data_section", "CorruptShardError",
           "ManifestError"]

FORMAT = "supermix-generated"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PNG_DIR = "png"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")


def shard_name(j: int) -> str:
    """File name of shard j."""
    return f"shard-{j:05d}.safetensors"


def is_shard_name(name: str) -> bool:
    """Whether ``name`` is a shard's file name (``shard-00000.safetensors`` ...)."""
    return _SHARD_RE.match(name) is not None


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


def data_section(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors blob (after the 8-byte length and the JSON header)."""
    return blob[8 + int.from_bytes(blob[:8], "little"):]


def differing_keys(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def describe_diff(old: dict, new: dict, keys: list[str]) -> str:
    return ", ".join(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in keys)


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


LABELS = ("teacher_probs", "y_hat")


class CorruptShardError(UsageError):
    """A shard of a generated set is missing or its bytes differ from the manifest's sha256."""


class ManifestError(CorruptShardError):
    """The manifest of a generated set is malformed or disagrees with its shards."""
