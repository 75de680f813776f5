"""The training library under ``supermix train-teacher``, ``distill`` and ``train``.

Modules: :mod:`.schedule` (presets, epoch scaling, lr), :mod:`.batches` (in-memory banks, epoch
plans, rank-aware streams), :mod:`.data` (the labelled splits and a mixed set for training),
:mod:`.sync_bn` (SyncBatchNorm on CPUs, DDP wrapping), :mod:`.state` (a run's state),
:mod:`.loop` (the epoch loop with a per-step lr hook, evaluation), :mod:`.resume` (checkpoint,
log and ``--resume``) and
:mod:`.objectives` (cross-entropy, KD and the distillation objective).

Schedule (paper sec. 4)
    SGD, momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by ``--lr-decay-rate`` (0.1) at each
    of ``--lr-decay-epochs``. ``--schedule-preset cifar100`` is the paper's CIFAR-100 run (batch
    128, 600 epochs, decays at 200/300/400/500); ``--schedule-preset imagenet`` its ImageNet
    batch of 256 (the paper gives no ImageNet schedule: 100 epochs decayed at 30/60/90 with
    weight decay 1e-4, torchvision's reference recipe, fill the gap). Without a preset the
    decays default to the paper's fractions 1/3, 1/2, 2/3, 5/6 of ``--epochs``.

Epochs with a mixed set (:func:`scale_schedule`)
    ``--epochs`` and ``--lr-decay-epochs`` count passes over the n labelled images, as if there
    were no mixed set. An epoch of a run with a mixed set of n' images is L slots long
    (distillation pairs a real and a mixed image per slot, L = max(n, n'); classification
    draws from the union, L = n + n'), so the run does ``round(E * n / L)`` epochs and decays
    at ``round(d * n / L)``: the number of iterations, about E * n / batch, stays fixed for
    every kappa = n' / n. The paper's example: kappa = 5, 600 epochs -> 120.
    ``--no-scale-epochs`` takes the numbers as given.

Batches and determinism (:class:`EpochPlan`, :class:`ImageBank`)
    ``--batch-size`` is the global batch. Epoch e visits a permutation of its L slots drawn
    from a generator seeded with (seed, e), and draws every random crop and flip of a global
    batch from a second generator seeded with (seed, e); rank r of w takes the positions
    r, r + w, ... of each global batch. So one process and w processes see the same global
    batches with the same augmentation, and a resumed run sees the batches it would have seen.
    Everything else random (online mixing, RandAugment, dropout, DataLoader workers) draws
    from per-rank generators reseeded with (seed, e, rank) at the start of every epoch.

Resume
    A checkpoint is written atomically after every epoch. Because every random stream of
    epoch e is re-derived from (seed, e, rank) when the epoch starts, the epoch number is the
    whole sampler and RNG position: ``--resume`` restores weights, optimizer state (momentum),
    the lr (a function of the epoch), the history and the elapsed time, and continues with
    exactly the next batch an uninterrupted run would have drawn.

Distributed (``torchrun --nproc_per_node N``)
    DistributedDataParallel over NCCL (GPUs) or gloo (CPUs), BatchNorm converted to
    SyncBatchNorm (on CPUs :class:`CpuSyncBatchNorm`, since torch's needs a GPU), metrics
    summed over ranks with ``all_reduce``, test set sharded, only rank 0 writes files.

Files in ``--out``: ``checkpoint.pt`` (resume state), ``model.pt`` (final weights + config,
loadable by :func:`supermix.checkpoint.load_teacher`), ``log.jsonl`` (one JSON object per line:
``start``, one ``epoch`` per epoch, ``end``).
"""
from .batches import CropFlip, EpochPlan, ImageBank, bank_stream, crop_flip, dataset_stream
from .data import LabelledData, check_generated, generated_notes, mixed_bank
from .loop import (SGDSettings, evaluate, finish, fit, make_sgd, run_command, setup_model,
                   topk_correct, train)
from .prepare import RunSettings, prepare_run
from .objectives import (MIXED_LABELS, DistillWeights, ce_loss, ce_to_teacher_top1,
                         distill_objective, kd_loss, mixed_targets, soft_cross_entropy)
from .resume import (CHECKPOINT_NAME, LOG_NAME, MODEL_NAME, check_out, must_match, run_arguments,
                     start_record, try_resume, write_log)
from .schedule import (DEFAULT_DECAY_FRACTIONS, SCHEDULE_DEFAULTS, SCHEDULE_PRESETS,
                       resolve_schedule, scale_schedule, step_lr, warmup_lr_factor)
from .state import TrainState
from .sync_bn import CpuSyncBatchNorm, convert_sync_batchnorm, prepare_model

__all__ = [
    "CHECKPOINT_NAME", "LOG_NAME", "MODEL_NAME", "check_out", "must_match", "run_arguments",
    "start_record",
    "try_resume", "write_log",
    "DEFAULT_DECAY_FRACTIONS", "SCHEDULE_DEFAULTS", "SCHEDULE_PRESETS", "resolve_schedule",
    "scale_schedule", "step_lr", "warmup_lr_factor",
    "CropFlip", "EpochPlan", "ImageBank", "bank_stream", "crop_flip", "dataset_stream",
    "LabelledData", "check_generated", "generated_notes", "mixed_bank",
    "CpuSyncBatchNorm", "convert_sync_batchnorm", "prepare_model",
    "TrainState", "evaluate", "finish", "fit", "make_sgd", "run_command", "setup_model", "SGDSettings",
    "topk_correct", "train", "RunSettings", "prepare_run",
    "MIXED_LABELS", "DistillWeights", "ce_loss", "ce_to_teacher_top1", "distill_objective",
    "kd_loss", "mixed_targets", "soft_cross_entropy",
]
