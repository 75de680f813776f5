"""Writing a mixed data set (``supermix generate``), deterministically and resumably.

The set of N samples is cut into shards of ``shard_size`` samples. Shard j is a pure function of
(settings, seed, j): a CPU ``torch.Generator`` seeded with ``seed * 1_000_003 + j`` draws the
source images of each batch (a random permutation of the data set, first ``b`` indices, so no
image appears twice in one batch), and a generator on the mixing device seeded with the same
number drives the mixer (source sets, Dirichlet weights, CutMix boxes). A shard mixes batches
until it holds its quota; unless ``keep_failed``, samples whose masks did not reach the
termination criterion are dropped and more batches are drawn, up to a guard of
``MAX_DRAW_FACTOR`` times the quota, after which the run stops with an error that says what to
change. So the finished set has exactly N samples, and a rerun with the same settings writes
byte-identical shards (on the same device, CPU thread count and kernel backend: these change
the float reductions, hence iteration counts and images, slightly; they are runtime choices,
recorded in the manifest but not compared on resume).

The files (shards, manifest, PNGs) are described in :mod:`supermix.mixed_set`. Every file is
written to a temporary file in the same folder and ``os.replace``d into place, so a process
killed at any moment (``kill -9``) leaves finished files or none. A rerun with the same command
verifies the finished shards (sha256 against the manifest; a shard missing from the manifest
because the run died between the two writes is accepted from its header), deletes the temporary
files and generates only the missing shards. A manifest or shard written with other settings is
an error naming the differing keys, unless ``overwrite``. One process writes a folder at a time
(:func:`supermix.runtime.lock_output_for`; under torchrun rank 0 holds the lock for the job): a
second one stops before touching it, naming the holder's pid. Every setting, the mask against
the images included, is checked before the folder is touched, and a teacher or solver gone
NaN/inf stops the run (:class:`GenerationError`) before its shard is written.

The blind mixers (MixUp, CutMix) are labelled by the teacher, as the paper does for its
baselines. Their ``success`` is the same termination criterion evaluated on the teacher's
prediction (does the teacher see all source classes?), recorded for comparison; their samples are
never dropped, since dropping them would make them a teacher-filtered variant of the method.

Under ``torchrun`` (RANK and WORLD_SIZE set) rank r generates the shards j with
j % world_size == r; after a barrier (gloo on CPU, nccl on CUDA) rank 0 writes the manifest.

``limit`` (``--limit N|FILE``) mixes only the first N images of the split, or the ones an index
file lists; ``sources`` still index the whole split, and the manifest's data size is the
subset's.
"""
from .run import generate, generate_set
from .settings import (DEFAULTS, IDENTITY_KEYS, METHOD_NAMES, MIXER_NAMES, SOLVER_PRESETS,
                       SPLIT_NAMES, STORE_NAMES, GenerateSettings, check_image_fit,
                       resolve_settings)
from .shards import (MAX_DRAW_FACTOR, GenerationError, blind_success, make_mixer, shard_quotas,
                     shard_seed)
from .source import ImageSource

__all__ = [
    "DEFAULTS", "IDENTITY_KEYS", "MAX_DRAW_FACTOR", "METHOD_NAMES", "MIXER_NAMES",
    "SOLVER_PRESETS", "SPLIT_NAMES", "STORE_NAMES", "GenerateSettings", "GenerationError",
    "ImageSource", "blind_success", "check_image_fit", "generate", "generate_set", "make_mixer",
    "resolve_settings", "shard_quotas", "shard_seed",
]
