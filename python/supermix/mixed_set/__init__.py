"""The mixed-set format: :mod:`.format` (names, shared checks), :mod:`.writer` and :mod:`.reader`.

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

from .format import (FORMAT, FORMAT_VERSION, LABELS, MANIFEST, PNG_DIR, CorruptShardError,
                     ManifestError, check_shard_data, describe_diff, differing_keys,
                     read_manifest, read_shard_info, shard_name)
from .reader import (GeneratedSet, MixedDataset, check_manifest, load_mixed_set,
                     verify_mixed_set)
from .writer import (ShardStats, check_out_dir, clean_temporaries, finished_shards, remove_set,
                     shard_entry, shard_info, to_stored, totals, write_manifest, write_pngs,
                     write_shard)

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
