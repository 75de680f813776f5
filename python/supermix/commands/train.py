"""``supermix train``: a classifier trained on the original data plus a generated set (Table 1).

The paper's classification protocol (sec. 4.1): train the target model on the original data,
generate a mixed set with it as the teacher (``supermix generate``), then train the target model
from scratch on the union of the original images (one-hot labels) and the mixed images (soft
labels; ``--mixed-label``: the solver's target ``y_hat`` = sum_i r_i onehot(y_i), default, or
the teacher's softmax ``teacher_probs``, or its top class ``teacher_top1``). The loss is the
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
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import models
from . import training as tr
from .errors import UsageError
from .mixed_set import GeneratedSet, load_mixed_set

__all__ = ["soft_cross_entropy", "MIXED_LABELS", "add_parser", "run"]

MIXED_LABELS = ("y_hat", "teacher_probs", "teacher_top1")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum_c targets_c * log_softmax(logits)_c``, mean over the batch.

    logits: [B,n]; targets: [B,n] float rows summing to 1 (one-hot for real images).
    """
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def mixed_targets(generated: GeneratedSet, label: str) -> torch.Tensor:
    """Soft labels [n', classes] of a generated set for ``--mixed-label``."""
    if label == "y_hat":
        return generated.y_hat
    if label == "teacher_probs":
        return generated.teacher_probs
    top = generated.teacher_probs.argmax(dim=1)
    return F.one_hot(top, generated.teacher_probs.shape[1]).float()


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
    g.add_argument("--image-size", type=tr.positive_int, default=224,
                   help="crop size for imagefolder data (default %(default)s)")
    m = p.add_argument_group("mixed images")
    m.add_argument("--mixed", default=None, help="a set written by 'supermix generate'")
    m.add_argument("--mixed-label", choices=MIXED_LABELS, default="y_hat",
                   help="soft label of the mixed images (default %(default)s)")
    m.add_argument("--randaugment", choices=("none", "mixed", "all"), default="none",
                   help="RandAugment on the mixed images (after mixing) or on all images "
                        "(default %(default)s)")
    tr.add_schedule_arguments(p)
    tr.add_runtime_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``supermix train``; returns the exit status."""
    return tr.run_command(args, _run)


def _run(args, info: tr.DistInfo) -> int:
    if args.randaugment == "mixed" and args.mixed is None:
        raise UsageError("--randaugment mixed: there are no mixed images without --mixed DIR")
    if args.mixed is not None:
        args.mixed = str(Path(args.mixed).resolve())
    data = tr.LabelledData(args.data, args.data_root, as_cifar=args.as_cifar,
                           limit_train=args.limit_train, limit_test=args.limit_test,
                           randaugment=args.randaugment == "all", download=args.download,
                           image_size=args.image_size, workers=args.workers)
    generated = None
    if args.mixed is not None:
        generated = load_mixed_set(args.mixed, limit=args.limit_mixed)
        tr.check_generated(generated, data, data.num_classes)

    out = Path(args.out or f"runs/train-{args.arch}-{data.name}")
    tr.check_out(out, args.resume)
    device = info.device
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(args.seed)
    net = models.create(args.arch, num_classes=data.num_classes, in_channels=data.shape[0])
    model, module = tr.prepare_model(net, info, args.channels_last)
    optimizer = tr.make_sgd(model, args)

    n = data.num_train
    n_mixed = len(generated.images) if generated is not None else 0
    slots = n + n_mixed
    epochs, decays = tr.scale_schedule(args.epochs, args.lr_decay_epochs, n, slots,
                                       not args.no_scale_epochs)
    if args.batch_size % info.world:
        raise UsageError(f"--batch-size: the global batch {args.batch_size} must divide over "
                         f"{info.world} processes")
    steps = tr.EpochPlan.steps_for(slots, args.batch_size, args.limit_steps)
    if steps == 0:
        raise UsageError(f"--batch-size: {args.batch_size} is larger than the {slots} samples "
                         f"of an epoch")
    bank = targets = None
    if generated is not None:
        bank = tr.mixed_bank(generated, data.mean, data.std, data.real_padding,
                             randaugment=args.randaugment in ("mixed", "all"))
        targets = mixed_targets(generated, args.mixed_label)

    run_args = tr.run_arguments(args)
    config = {
        "arch": args.arch, "num_classes": data.num_classes, "in_channels": data.shape[0],
        "data": data.name, "as_cifar": data.as_cifar, "input_size": list(data.shape),
        "mean": data.mean, "std": data.std, "class_names": data.class_names,
    }
    state = tr.TrainState(
        model=model, module=module, optimizer=optimizer, info=info, out=out, config=config,
        run_args=run_args, epochs=epochs, decay_epochs=decays, lr=args.lr,
        decay_rate=args.lr_decay_rate, steps_per_epoch=steps, eval_every=args.eval_every,
        amp=args.amp, show_progress=not args.no_progress, stop_after=args.stop_after, name="train")
    state.start_record = {
        "command": "train", "command_line": getattr(args, "command_line", None),
        "args": run_args, "config": config, "world_size": info.world, "device": str(device),
        "labelled_images": n, "mixed_images": n_mixed, "epoch_slots": slots,
        "kappa": (n_mixed / n) if n_mixed else None, "epochs": epochs, "lr_decay_epochs": decays,
        "steps_per_epoch": steps,
    }
    if args.resume:
        tr.try_resume(state, tr.must_match(run_args))
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
                           info.rank, device, memory_format)
        mixed = (tr.bank_stream(bank, targets, plan, lambda s: torch.where(s >= n, s - n, -1),
                                tr.make_generator(args.seed, "augment", "mixed", epoch), device,
                                memory_format) if bank is not None else None)
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
        inputs = torch.cat(images).contiguous(memory_format=memory_format)
        logits = module(inputs).float()
        loss = soft_cross_entropy(logits, torch.cat(soft))
        b = x.shape[0] if x is not None else 0
        correct = (logits[:b].detach().argmax(dim=1) == y).sum() if b else 0
        return loss, {}, inputs.shape[0], correct, b

    t0 = time.perf_counter()
    tr.fit(state, batches, step, lambda: data.test_batches(info, memory_format))
    end = tr.finish(state, {"wall_s": round(time.perf_counter() - t0, 3)})
    if info.is_main and not end.get("stopped"):
        print(f"done: test top1 {end['test_top1']:.4f} top5 {end['test_top5']:.4f} after "
              f"{end['epochs']} epochs ({state.elapsed / 60:.1f} min); wrote "
              f"{out / tr.MODEL_NAME} and {out / tr.LOG_NAME}", flush=True)
    return 0
