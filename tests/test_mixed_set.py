"""The mixed-set reader (``MixedDataset``, ``load_mixed_set``, ``verify_mixed_set``) against the
shard contents read independently with safetensors.

The sets are written with the format's public writer (``write_shard``, ``write_manifest``) in
three shards of unequal sizes, every sample with its own pixels and labels, so a reader that
takes a sample from the wrong shard or row, or a label from the wrong field, is caught.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from supermix.errors import MissingFileError, UsageError
from supermix.mixed_set import (MANIFEST, CorruptShardError, MixedDataset, ShardStats, load_mixed_set, read_manifest,
                                verify_mixed_set, write_manifest, write_shard)

COUNTS = (5, 3, 4)
CHANNELS, SIDE, CLASSES, K = 3, 4, 6, 2
MEAN, STD = [0.2, 0.5, 0.7], [0.3, 0.25, 0.4]


def write_set(root: Path, counts=COUNTS, store: str = "uint8", complete: bool = True, seed: int = 0) -> Path:
    """A set of ``sum(counts)`` samples; sample i's pixels are all distinct from every other's."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, first = [], 0
    for j, n in enumerate(counts):
        pixels = torch.rand(n, CHANNELS, SIDE, SIDE, generator=g)
        mixed = pixels.mul(255).round().to(torch.uint8) if store == "uint8" else pixels.half()
        tensors = {
            "mixed": mixed,
            "sources": torch.randint(0, 100, (n, K), generator=g),
            "r": torch.softmax(torch.randn(n, K, generator=g), 1),
            "y_hat": torch.softmax(torch.randn(n, CLASSES, generator=g) * 3, 1),
            "teacher_probs": torch.softmax(torch.randn(n, CLASSES, generator=g) * 3, 1),
            "mask_logits": torch.randn(n, K, 2, 2, generator=g),
            "iters": torch.arange(first, first + n),
            "success": torch.arange(first, first + n) % 2 == 0,
        }
        entries.append(write_shard(root, j, tensors, ShardStats(generated=n, successes=n), {"seed": seed}))
        first += n
    write_manifest(root, {
        "format": "supermix-generated", "version": 1, "complete": complete, "shard_count": len(counts),
        "config": {"seed": seed},
        "data": {"mean": MEAN, "std": STD, "class_names": [f"c{i}" for i in range(CLASSES)]},
        "shards": entries,
    })
    return root


def shard_rows(root: Path) -> dict[str, torch.Tensor]:
    """Every stored field of the set in sample order, read with safetensors and the manifest's
    shard list, without the reader under test."""
    manifest = json.loads((root / MANIFEST).read_text())
    shards = [load_file(str(root / e["file"])) for e in manifest["shards"]]
    return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


@pytest.fixture
def mixed_set(tmp_path):
    return write_set(tmp_path / "set")


def test_item_i_is_sample_i(mixed_set):
    rows = shard_rows(mixed_set)
    ds = MixedDataset(mixed_set)
    assert len(ds) == sum(COUNTS) == len(rows["mixed"])
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (CHANNELS, SIDE, SIDE)
        assert torch.equal(image, rows["mixed"][i].float() / 255), i
        assert torch.equal(label, rows["teacher_probs"][i]), i
        for name in ("sources", "r", "mask_logits", "iters", "success", "y_hat"):
            assert torch.equal(ds.field(name, i), rows[name][i]), (name, i)
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0]) and torch.equal(ds[-len(ds)][0], ds[0][0])
    for bad in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match=f"out of range for {len(ds)} samples"):
            ds[bad]


def test_locate_walks_the_shards(mixed_set):
    ds = MixedDataset(mixed_set)
    expected = [(j, row) for j, n in enumerate(COUNTS) for row in range(n)]
    assert [ds.locate(i) for i in range(len(ds))] == expected
    assert ds.locate(-1) == (2, 3)


@pytest.mark.parametrize("label", ["teacher_probs", "y_hat"])
def test_every_label_choice_returns_its_own_field(mixed_set, label):
    rows = shard_rows(mixed_set)
    other = {"teacher_probs": "y_hat", "y_hat": "teacher_probs"}[label]
    ds = MixedDataset(mixed_set, label=label)
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert labels.dtype == torch.float32
    assert torch.equal(labels, rows[label])
    assert not torch.allclose(labels, rows[other])


def test_bad_label_is_named(mixed_set):
    with pytest.raises(UsageError, match=r"label: expected one of \['teacher_probs', 'y_hat'\], got 'probs'"):
        MixedDataset(mixed_set, label="probs")


def test_normalize_and_transform(mixed_set):
    rows = shard_rows(mixed_set)
    ds = MixedDataset(mixed_set, normalize=True)
    mean, std = torch.tensor(MEAN).view(-1, 1, 1), torch.tensor(STD).view(-1, 1, 1)
    for i in (0, 6, 11):
        torch.testing.assert_close(ds[i][0], (rows["mixed"][i].float() / 255 - mean) / std)
    flipped = MixedDataset(mixed_set, transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[7][0], rows["mixed"][7].float().div(255).flip(-1))
    assert torch.equal(flipped[7][1], rows["teacher_probs"][7])
    assert ds.class_names == [f"c{i}" for i in range(CLASSES)]


def test_float16_store(tmp_path):
    root = write_set(tmp_path / "f16", store="float16")
    rows = shard_rows(root)
    ds = MixedDataset(root)
    assert rows["mixed"].dtype == torch.float16
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], rows["mixed"][i].float())
    assert torch.equal(load_mixed_set(root).images, rows["mixed"])


def test_dataloader_with_two_workers(mixed_set):
    rows = shard_rows(mixed_set)
    ds = MixedDataset(mixed_set, label="y_hat")
    ds[0], ds[len(ds) - 1]  # handles opened here before the workers start
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), rows["mixed"].float() / 255)
    assert torch.equal(torch.cat(labels), rows["y_hat"])


def test_pickles_without_its_open_shards(mixed_set):
    """What ``spawn`` workers receive: a copy that opens its own shard handles."""
    rows = shard_rows(mixed_set)
    ds = MixedDataset(mixed_set, label="y_hat", normalize=True)
    ds[0], ds[6]
    assert ds._handles  # noqa: SLF001 -- the point of the test: open handles are not pickled
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._handles == {}  # noqa: SLF001
    for i in range(len(ds)):
        assert torch.equal(copy[i][0], ds[i][0]) and torch.equal(copy[i][1], rows["y_hat"][i])


def test_read_field_and_has_field(mixed_set):
    rows = shard_rows(mixed_set)
    ds = MixedDataset(mixed_set)
    for name in rows:
        assert torch.equal(ds.read_field(name), rows[name]), name
    assert ds.has_field("mask_logits") and not ds.has_field("nothing")


def test_load_mixed_set(mixed_set):
    rows = shard_rows(mixed_set)
    loaded = load_mixed_set(mixed_set)
    assert torch.equal(loaded.images, rows["mixed"])
    assert torch.equal(loaded.y_hat, rows["y_hat"]) and torch.equal(loaded.teacher_probs, rows["teacher_probs"])
    assert loaded.num_classes == CLASSES and loaded.path == mixed_set
    assert loaded.manifest == json.loads((mixed_set / MANIFEST).read_text())
    part = load_mixed_set(mixed_set, limit=7)
    assert torch.equal(part.images, rows["mixed"][:7]) and torch.equal(part.y_hat, rows["y_hat"][:7])
    assert torch.equal(part.teacher_probs, rows["teacher_probs"][:7])
    assert part.images.is_contiguous()


def test_load_mixed_set_errors(tmp_path):
    with pytest.raises(MissingFileError, match=r"^mixed: no folder at"):
        load_mixed_set(tmp_path / "none")
    empty = write_set(tmp_path / "empty", counts=())
    with pytest.raises(UsageError, match=r"^mixed: the generated set in .* is empty"):
        load_mixed_set(empty)


def test_corrupt_and_missing_shards_are_named(tmp_path):
    root = write_set(tmp_path / "set")
    assert verify_mixed_set(root) == len(COUNTS)
    path = root / "shard-00001.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptShardError, match=r"shard shard-00001\.safetensors is corrupt \(sha256 "):
        MixedDataset(root)
    with pytest.raises(CorruptShardError, match="shard-00001"):
        load_mixed_set(root)
    assert len(MixedDataset(root, verify=False)) == sum(COUNTS)
    assert torch.equal(load_mixed_set(root, verify=False).images[:5], shard_rows_of(root, 0)["mixed"])
    path.unlink()
    with pytest.raises(CorruptShardError, match=r"shard shard-00001\.safetensors is missing"):
        verify_mixed_set(root)
    reader = MixedDataset(root, verify=False)
    with pytest.raises(CorruptShardError, match=r"cannot read shard shard-00001\.safetensors"):
        reader[5]
    assert torch.equal(reader[4][1], shard_rows_of(root, 0)["teacher_probs"][4])


def shard_rows_of(root: Path, j: int) -> dict[str, torch.Tensor]:
    return load_file(str(root / f"shard-{j:05d}.safetensors"))


def test_incomplete_sets(tmp_path):
    root = write_set(tmp_path / "set", complete=False)
    with pytest.raises(UsageError, match=r"generation has not finished \(3 of 3 shards\); rerun the same"):
        MixedDataset(root)
    assert len(MixedDataset(root, allow_incomplete=True)) == sum(COUNTS)


def test_missing_and_foreign_manifests(tmp_path):
    with pytest.raises(MissingFileError, match=r"generated set: no manifest\.json in"):
        MixedDataset(tmp_path)
    with pytest.raises(MissingFileError, match=r"generated set: no manifest\.json in"):
        verify_mixed_set(tmp_path)
    assert read_manifest(tmp_path) is None
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UsageError, match=r"manifest: .* is unreadable or not JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(UsageError, match=r"manifest: .* is not a supermix-generated manifest"):
        MixedDataset(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(UsageError, match="is not a supermix-generated manifest"):
        read_manifest(tmp_path)


def test_verify_uses_the_manifest_the_set_was_opened_with(tmp_path):
    root = write_set(tmp_path / "set")
    ds = MixedDataset(root)
    other = write_set(tmp_path / "other", seed=1)
    (root / MANIFEST).write_text((other / MANIFEST).read_text())
    ds.verify()  # the shards still match the manifest ds read
    with pytest.raises(CorruptShardError, match="is corrupt"):
        verify_mixed_set(root)


def test_a_single_shard_set(tmp_path):
    root = write_set(tmp_path / "one", counts=(4,))
    rows = shard_rows(root)
    ds = MixedDataset(root)
    assert ds.has_field("mask_logits") and not ds.has_field("nothing")
    assert torch.equal(torch.stack([ds[i][0] for i in range(4)]), rows["mixed"].float() / 255)


def test_corruption_messages_name_the_set_and_the_hashes(tmp_path):
    import hashlib

    root = write_set(tmp_path / "set")
    path = root / "shard-00002.safetensors"
    want = json.loads((root / MANIFEST).read_text())["shards"][2]["sha256"]
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    message = (f"generated set {root}: shard shard-00002.safetensors is corrupt "
               f"(sha256 {got[:16]}..., manifest says {want[:16]}...)")
    with pytest.raises(CorruptShardError, match="^" + re.escape(message) + "$"):
        verify_mixed_set(root)


def test_a_shard_from_other_settings_is_named(tmp_path):
    """A shard swapped in from a set made with other settings (its sha256 put in the manifest)
    disagrees with the manifest's settings."""
    root, other = write_set(tmp_path / "set"), write_set(tmp_path / "other", seed=1)
    name = "shard-00001.safetensors"
    (root / name).write_bytes((other / name).read_bytes())
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["shards"][1]["sha256"] = json.loads((other / MANIFEST).read_text())["shards"][1]["sha256"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    message = f"generated set {root}: shard {name} was generated with other settings than the manifest's: seed"
    with pytest.raises(CorruptShardError, match="^" + re.escape(message) + "$"):
        MixedDataset(root)


def test_a_malformed_manifest_names_the_set(tmp_path):
    root = write_set(tmp_path / "set")
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["shards"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    for call in (lambda: MixedDataset(root, verify=False), lambda: verify_mixed_set(root)):
        with pytest.raises(CorruptShardError, match=re.escape(f"generated set {root}: {MANIFEST}: lacks the 'shards' list")):
            call()
