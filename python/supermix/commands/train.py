"""``supermix train``: a classifier trained on the original data plus a generated set (Table 1).

The paper's classification protocol (sec. 4.1): train the target model on the original data,
generate a mixed set with it as the teacher (``supermix generate``), then train the target model
from scratch on the union of the original images (one-hot labels) and the mixed images (soft
labels; ``--mixed-label``: the teacher's softmax on the mixed image ``teacher_probs``, default,
so the label describes the image as the mixers' labels do; or the solver's target ``y_hat`` =
sum_i r_i onehot(y_i), which a sample that stopped early does not carry; or the teacher's top
class ``teacher_top1``). The loss is the
cross-entropy to these soft labels, mean over the batch. ``--randaugment mixed`` applies
RandAugment to the mixed images after mixing ("SuperMix + RA", mix first, then RA);
``--randaugment all`` to every training image. Without ``--mixed`` it is plain supervised
training (the baseline column).

Batches are drawn from the union: an epoch is a permutation of n + n' slots, so with
``--epochs E`` (in passes over the n real images) the run does ``round(E * n / (n + n'))``
epochs and the iteration count stays that of E epochs of the real data alone
(``--no-scale-epochs`` turns this off). Schedule, determinism, resume and torchrun: see
:mod:`supermix.training`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from . import args as sargs
from .. import models
from .. import training as tr
from ..errors import UsageError
from ..runtime import DistInfo, make_generator, memory_format
from ..mixed_set import load_mixed_set
from ..training.objectives import MIXED_LABELS, mixed_targets, soft_cross_entropy

__all__ = ["add_parser", "run"]

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``supermix train``."""
    p = subparsers.add_parser(
        "train", help="train a classifier on the original data plus a generated mixed set",
        description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("model and data")
    g.add_argument("--arch", default="resnet20", help="model name (supermix.models.available(); default "
                                                      "%(default)s)")
    g.add_argument("--data", default="fashion-mnist",
                   help="data spec: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, "
                        "imagefolder:DIR (default %(default)s)")
    g.add_argument("--data-root", default=None, help="folder of the data set")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    g.add_argument("--as-cifar", action="store_true",
                   help="Fashion-MNIST as 3x32x32 (pad 2, repeat channels)")
    sargs.add_image_size_argument(g)
    m = p.add_argument_group("mixed images")
    m.add_argument("--mixed", default=None, help="a set written by 'supermix generate'")
    m.add_argument("--mixed-label", choices=MIXED_LABELS, default="teacher_probs",
                   help="soft label of the mixed images (default %(default)s)")
    m.add_argument("--randaugment", choices=("none", "mixed", "all"), default="none",
                   help="RandAugment on the mixed images (after mixing) or on all images "
                        "(default %(default)s)")
    sargs.add_schedule_arguments(p)
    sargs.add_runtime_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``supermix train``; returns the exit status."""
    return sargs.run_training(args, _run)


def _run(args, info: DistInfo) -> int:
    sargs.resolve_schedule_flags(args)
    if args.randaugment == "mixed" and args.mixed is None:
        raise UsageError("--randaugment mixed: there are no mixed images without --mixed DIR")
    if args.mixed is not None:
        args.mixed = str(Path(args.mixed).resolve())
    data = sargs.labelled_data(args, randaugment=args.randaugment == "all")
    generated = None
    if args.mixed is not None:
        generated = load_mixed_set(args.mixed, limit=args.limit_mixed)
        tr.check_generated(generated, data, data.num_classes)
    models.check_name(args.arch)  # before the step checks; the model is built later

    device = info.device
    batch_format = memory_format(args.channels_last)
    n = data.num_train
    n_mixed = len(generated.images) if generated is not None else 0
    slots = n + n_mixed
    epochs, decays = tr.scale_schedule(args.epochs, args.lr_decay_epochs, n, slots,
                                       not args.no_scale_epochs)
    steps = tr.EpochPlan.checked_steps(slots, args.batch_size, info.world, args.limit_steps)
    state = tr.prepare_run(
        sargs.run_settings(args, "train", args.arch, f"runs/train-{args.arch}-{data.name}",
                           epochs, decays, steps),
        data.num_classes, data.shape[0], info, tr.run_arguments(vars(args)),
        data.model_config(args.arch), labelled_images=n, mixed_images=n_mixed,
        epoch_slots=slots, kappa=(n_mixed / n) if n_mixed else None, epochs=epochs,
        lr_decay_epochs=decays, steps_per_epoch=steps)
    module = state.module
    bank = targets = None
    if generated is not None:
        bank = tr.mixed_bank(generated, data.mean, data.std, data.real_padding,
                             randaugment=args.randaugment in ("mixed", "all"))
        targets = mixed_targets(generated, args.mixed_label)
    if info.is_main and generated is not None:
        for note in tr.generated_notes(generated, n):
            print(note, flush=True)
    if info.is_main:
        src = (f" + mixed set {generated.path} ({n_mixed} images, labels {args.mixed_label})"
               if generated is not None else "")
        print(f"train: {args.arch} on {args.data} ({n} labelled){src}; RandAugment "
              f"{args.randaugment}; {epochs} epochs x {steps} steps of {args.batch_size}, lr "
              f"{args.lr} decayed at {decays}; {info.world} process(es) on {device}", flush=True)

    def batches(epoch: int):
        plan = tr.EpochPlan(slots, args.batch_size, args.seed, epoch, info.world, info.rank,
                            args.limit_steps)
        real = data.stream(plan, lambda s: torch.where(s < n, s, -1), args.seed, epoch,
                           info.rank, device, batch_format)
        mixed = (tr.bank_stream(bank, targets, plan, lambda s: torch.where(s >= n, s - n, -1),
                                make_generator(args.seed, "augment", "mixed", epoch), device,
                                batch_format) if bank is not None else None)
        for x, y in real:
            x_mix, y_mix = next(mixed) if mixed is not None else (None, None)
            yield x, y, x_mix, y_mix

    def step(batch):
        x, y, x_mix, y_mix = batch
        images, soft = [], []
        if x is not None and x.shape[0]:
            images.append(x)
            soft.append(F.one_hot(y, data.num_classes).float())
        if x_mix is not None and x_mix.shape[0]:
            images.append(x_mix)
            soft.append(y_mix.float())
        inputs = torch.cat(images).contiguous(memory_format=batch_format)
        logits = module(inputs).float()
        loss = soft_cross_entropy(logits, torch.cat(soft))
        b = x.shape[0] if x is not None else 0
        correct = (logits[:b].detach().argmax(dim=1) == y).sum() if b else 0
        return loss, {}, inputs.shape[0], correct, b

    tr.train(state, batches, step, lambda: data.test_batches(info, batch_format))
    return 0
