"""The mixed-set writer: shards and manifest written atomically, and what a resumed run needs
(the finished shards, the temporaries to clean, the totals)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_bytes, atomic_write_text, sha256_file
from ..errors import UsageError
from .format import (FORMAT, FORMAT_VERSION, MANIFEST, PNG_DIR, check_shard_data,
                     data_section, describe_diff, differing_keys, is_shard_name,
                     read_shard_info, shard_name)

__all__ = ["ShardStats", "to_stored", "shard_info",
           "shard_entry", "write_shard", "write_manifest", "write_pngs", "check_out_dir",
           "clean_temporaries", "remove_set", "finished_shards", "totals"]


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


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
        data_section(save(tensors, metadata=_header_metadata(info)))).hexdigest()
    blob = save(tensors, metadata=_header_metadata(info))
    path = out_dir / shard_name(j)
    atomic_write_bytes(blob, path)
    return shard_entry(path, info, hashlib.sha256(blob).hexdigest(), round(stats.seconds, 3))


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_text(_json_text(manifest), out_dir / MANIFEST)



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
        raise UsageError(f"out: cannot write to {out_dir}: {e.strerror or e}") from e


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
        if entry.name == MANIFEST or is_shard_name(entry.name):
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
                f"out: {path} was generated with other settings: "
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
