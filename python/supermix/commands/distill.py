"""``supermix distill``: train a student from a teacher with the paper's objectives (sec. 4.2).

Per step the student sees a batch of B real images and, with a mixed source, B mixed images
(the original code pairs slot i of the real set with slot i of the mixed set). The loss is

    w_ce * CE(student(x), y)                               cross-entropy on the real labels
  + w_kd * KD_T(student(x), teacher(x))                    Hinton KD on the real images
  + w_mixed_ce * CE(student(x'), argmax teacher(x'))       "CE distillation" on mixed images
  + w_mixed_kd * KD_T(student(x'), teacher(x'))            KD on mixed images

with KD_T(s, t) = T^2 * KL(softmax(t / T) || softmax(s / T)), summed over classes and averaged
over the batch (CRD's ``DistillKL``). The teacher's outputs on x' are recomputed every step on
the augmented mixed image, as the original does, so the stored labels of a generated set are
not used. The weights play the role of the original ``-r`` (CE, both real and mixed), ``-a``
(KD) flags; the paper's methods are:

=============================  ==============================================================
student alone                  ``--w-ce 1``
KD [14]                        ``--w-ce 0.1 --w-kd 0.9`` (CRD's setting, T = 4)
CE distillation on a mixed set ``--w-ce 1 --w-mixed-ce 1 --mixed DIR``
KD + a mixed set               ``--w-ce 0.1 --w-kd 0.9 --w-mixed-kd 0.9 --mixed DIR``
the original code's objective  ``--recipe paper``: ``--w-ce 1.8 --w-kd 0.2 --w-mixed-ce 1.8
                               --w-mixed-kd 0 --T 4`` (its ``-r 1.8 -a 0.2``: hard teacher
                               labels on the mixed images, KD on the real images only)
=============================  ==============================================================

A ``--recipe`` names a whole objective (:data:`RECIPES`); an explicit ``--w-*`` or ``--T``
flag overrides that one weight. The recipe and the weights that ran are printed, logged in the
start record and kept in the checkpoint's config.

Mixed images come from a set written by ``supermix generate`` (``--mixed DIR``, offline, as
the paper) or are made from each real batch by a teacher-labelled mixer (``--online supermix |
mixup | cutmix``). Mixed images get a random crop with half the real images' padding and a
flip; real images the data set's crop + flip.

One forward of the student on the real and mixed images together (so BatchNorm sees one batch
of 2B), one forward of the teacher (eval mode, no gradient) on what the active terms need. With
``--online supermix`` the solver's own teacher passes serve the loss: the teacher runs once on
the real batch (the KD term's logits and the sources' labels) and its probabilities on the
returned mixes are the mixed terms' targets, so no pass is made twice.
Schedule, epoch scaling by 1/kappa, determinism, resume and torchrun: see
:mod:`supermix.training`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from . import args as sargs
from ..errors import UsageError
from ..runtime import DistInfo, make_generator, memory_format
from ..config import SolverConfig
from ..mixers import MIXERS, mixer_names
from ..generation.settings import check_image_fit
from ..mixed_set import load_mixed_set
from ..teachers import check_teacher_fits, load_teacher, locate_teacher
from .. import models
from .. import training as tr
from ..training.objectives import DistillWeights, distill_objective

__all__ = [
    "add_parser",
    "run",
]

ONLINE_MIXERS = mixer_names()
# The solver settings distill's --online mixing takes as flags (k and alpha for every mixer).
ONLINE_SOLVER_SETTINGS = ("k", "alpha", "lambda_s", "method", "sigma", "mask_size", "max_iters")

# Named objectives: the weights and temperature of each (flags override single values).
RECIPES: dict[str, DistillWeights] = {
    # alldbi/SuperMix helper/loops.py: gamma (CE(real, y) + CE(mixed, argmax teacher(mixed)))
    # + alpha KD_T(real), with its README's -r 1.8 -a 0.2; the KD-on-mixed line is commented out.
    "paper": DistillWeights(ce=1.8, kd=0.2, mixed_ce=1.8, mixed_kd=0.0, T=4.0),
    # CRD's KD setting, with KD on the mixed images too (this package's earlier study).
    "kd-mixed": DistillWeights(ce=0.1, kd=0.9, mixed_ce=1.0, mixed_kd=0.9, T=4.0),
}


# ----------------------------------------------------------------------------------------------
# Objectives


# ----------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``supermix distill``."""
    p = subparsers.add_parser(
        "distill", help="train a student from a teacher (CE / KD on real and mixed images)",
        description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("models and data")
    g.add_argument("--teacher", default=None,
                   help="teacher checkpoint (default: the shipped Fashion-MNIST ResNet-20)")
    g.add_argument("--student", default="resnet8", help="student model name (supermix.models.available(); default "
                                                        "%(default)s)")
    g.add_argument("--data", default=None,
                   help="data spec (default: the teacher's data set)")
    g.add_argument("--data-root", default=None, help="folder of the data set")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    sargs.add_image_size_argument(g)
    m = p.add_argument_group("mixed images")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--mixed", default=None,
                     help="a set written by 'supermix generate' (offline, as the paper)")
    src.add_argument("--online", choices=ONLINE_MIXERS, default=None,
                     help="mix each real batch with this teacher-labelled mixer instead")
    sargs.add_solver_arguments(m, ("k", "alpha"), scope="online: ")
    sargs.add_solver_arguments(m, ONLINE_SOLVER_SETTINGS[2:], scope="online supermix: ")
    o = p.add_argument_group("objective (original code: -r CE, -a KD)")
    o.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="a named objective; explicit --w-*/--T flags override its values. "
                        "paper: the original code's 1.8 CE(real) + 1.8 CE(mixed, teacher's "
                        "top class) + 0.2 KD_4(real), no KD on mixed images; kd-mixed: 0.1 CE "
                        "+ 0.9 KD_4 on the real images, 1 CE + 0.9 KD_4 on the mixed ones")
    o.add_argument("--w-ce", type=sargs.non_negative_float, default=None,
                   help="cross-entropy on the real labels (default 1, or the recipe's)")
    o.add_argument("--w-kd", type=sargs.non_negative_float, default=None,
                   help="KD on the real images (default 0, or the recipe's)")
    o.add_argument("--w-mixed-ce", type=sargs.non_negative_float, default=None,
                   help="CE to the teacher's top class on the mixed images "
                        "(default 1 with --mixed/--online, else 0; or the recipe's)")
    o.add_argument("--w-mixed-kd", type=sargs.non_negative_float, default=None,
                   help="KD on the mixed images (default 0, or the recipe's)")
    o.add_argument("--T", type=float, default=None,
                   help="KD temperature (default 4, or the recipe's)")
    sargs.add_schedule_arguments(p)
    sargs.add_runtime_arguments(p)
    p.set_defaults(func=run)
    return p


def _weights(args) -> DistillWeights:
    """The objective: the recipe's weights (or the plain defaults), each explicit flag
    overriding its own value."""
    has_source = args.mixed is not None or args.online is not None
    base = RECIPES[args.recipe] if args.recipe else DistillWeights(
        mixed_ce=1.0 if has_source else 0.0)

    def pick(flag, default):
        return float(flag) if flag is not None else float(default)

    ce, kd = pick(args.w_ce, base.ce), pick(args.w_kd, base.kd)
    mixed_ce, mixed_kd = pick(args.w_mixed_ce, base.mixed_ce), pick(args.w_mixed_kd, base.mixed_kd)
    T = pick(args.T, base.T)
    if not math.isfinite(T) or T <= 0:
        raise UsageError(f"--T: expected a temperature > 0, got {T}")
    w = DistillWeights(ce=ce, kd=kd, mixed_ce=mixed_ce, mixed_kd=mixed_kd, T=T)
    if w.needs_mixed and not has_source:
        raise UsageError(f"--w-mixed-ce/--w-mixed-kd: mixed terms ({w.mixed_ce}, {w.mixed_kd}) "
                         f"need mixed images: pass --mixed DIR or --online MIXER")
    if has_source and not w.needs_mixed:
        raise UsageError("--mixed/--online: mixed images given but --w-mixed-ce and "
                         "--w-mixed-kd are both 0")
    if w.ce == 0 and w.kd == 0 and not w.needs_mixed:
        raise UsageError("--w-*: every objective weight is 0")
    return w


def _online_config(args) -> SolverConfig:
    """The online mixer's settings from the flags (checked by SolverConfig, errors naming the
    flag); the resolved values go back into ``args``, which the checkpoint records."""
    config = sargs.solver_config({name: getattr(args, name) for name in ONLINE_SOLVER_SETTINGS})
    for name in ONLINE_SOLVER_SETTINGS:
        value = getattr(config, name)
        setattr(args, name, value[0] if name == "mask_size" else value)
    return config


def _teacher_and_data(args):
    """The teacher (on the CPU), its config, the data spec, the labelled data it fits and the
    mixed set (None without --mixed); ``args.teacher`` and ``args.mixed`` become absolute."""
    teacher_path = locate_teacher(args.teacher)
    args.teacher = str(teacher_path.resolve())
    if args.mixed is not None:
        args.mixed = str(Path(args.mixed).resolve())
    teacher = load_teacher(teacher_path, map_location="cpu")
    tconfig = teacher.supermix_config
    spec = args.data or tconfig.get("data")
    if not spec:
        raise UsageError(f"--data: {teacher_path} does not say which data it was trained on; "
                         f"pass --data")
    as_cifar = check_teacher_fits(teacher_path, tconfig, spec, args.data_root)
    data = sargs.labelled_data(args, spec, as_cifar=as_cifar, mean=tconfig.get("mean"),
                               std=tconfig.get("std"))
    t_classes = int(tconfig["num_classes"])

    generated = None
    if args.mixed is not None:
        generated = load_mixed_set(args.mixed, limit=args.limit_mixed)
        tr.check_generated(generated, data, t_classes)
    return teacher, tconfig, spec, data, generated


def _batches_fn(args, info: DistInfo, data, bank, mixer, teacher, slots: int, n_mixed: int,
                batch_format):
    """``batches(epoch)``: (real images, labels, mixed images, the teacher's outputs when the
    solver already computed them) per step; the mixed images come from the set's ``bank`` or
    from ``mixer`` (online), or there are none."""
    n = data.num_train
    device = info.device
    solves = mixer is not None and MIXERS[args.online].solves
    dummy = torch.zeros(n_mixed, dtype=torch.long)

    def batches(epoch: int):
        plan = tr.EpochPlan(slots, args.batch_size, args.seed, epoch, info.world, info.rank,
                           args.limit_steps)
        real = data.stream(plan, lambda s: s % n, args.seed, epoch, info.rank, device,
                           batch_format)
        mixed = (tr.bank_stream(bank, dummy, plan, lambda s: s % n_mixed,
                               make_generator(args.seed, "augment", "mixed", epoch), device,
                               batch_format) if bank is not None else None)
        mix_gen = (make_generator(args.seed, "mix", epoch, info.rank, device=device)
                   if mixer is not None else None)
        for x, y in real:
            known = None
            if mixed is not None:
                x_mix = next(mixed)[0]
            elif solves:
                # The solver's teacher passes serve the loss too: its logits of the real batch
                # (computed here once, also the sources' labels) and its probabilities on the
                # returned mixes (log-probabilities are logits up to a constant per row).
                with torch.no_grad():
                    t_real = teacher(x).float()
                result = mixer.mix_batch(x, mix_gen, source_logits=t_real)
                x_mix = result.mixed.contiguous(memory_format=batch_format)
                known = (t_real, result.teacher_logits())
            elif mixer is not None:
                x_mix = mixer.mix_batch(x, mix_gen).mixed.contiguous(memory_format=batch_format)
            else:
                x_mix = None
            yield x, y, x_mix, known

    return batches


def _step_fn(module, teacher, weights: DistillWeights, batch_format):
    """The distillation step: the student on the real and mixed images in one pass, the
    teacher only where an active term needs it (or its outputs known from the solver)."""
    need_real_teacher = weights.kd > 0
    need_mixed_teacher = weights.needs_mixed

    def step(batch):
        x, y, x_mix, known = batch
        b = x.shape[0]
        inputs = (torch.cat([x, x_mix]).contiguous(memory_format=batch_format)
                  if x_mix is not None else x)
        logits = module(inputs).float()
        s_real = logits[:b]
        s_mixed = logits[b:] if x_mix is not None else None
        t_real = t_mixed = None
        with torch.no_grad():
            if known is not None:
                t_real, t_mixed = known
            elif need_real_teacher and need_mixed_teacher:
                t = teacher(inputs).float()
                t_real, t_mixed = t[:b], t[b:]
            elif need_real_teacher:
                t_real = teacher(x).float()
            elif need_mixed_teacher:
                t_mixed = teacher(x_mix).float()
        loss, parts = distill_objective(weights, s_real, y, t_real, s_mixed, t_mixed)
        correct = (s_real.detach().argmax(dim=1) == y).sum()
        return loss, parts, b, correct, b

    return step


def run(args: argparse.Namespace) -> int:
    """``supermix distill``; returns the exit status."""
    return sargs.run_training(args, _run)


def _run(args, info: DistInfo) -> int:
    sargs.resolve_schedule_flags(args)

    weights = _weights(args)
    config = _online_config(args)

    teacher, tconfig, spec, data, generated = _teacher_and_data(args)
    models.check_name(args.student)  # before the step checks; the model is built later

    solves = bool(args.online) and MIXERS[args.online].solves
    if solves:  # checked before --out is touched
        check_image_fit({"mask_size": args.mask_size}, data.shape)
    device = info.device
    batch_format = memory_format(args.channels_last)
    n = data.num_train
    n_mixed = len(generated.images) if generated is not None else 0
    slots = max(n, n_mixed)
    epochs, decays = tr.scale_schedule(args.epochs, args.lr_decay_epochs, n, slots,
                                      not args.no_scale_epochs)
    steps = tr.EpochPlan.checked_steps(slots, args.batch_size, info.world, args.limit_steps)
    local_batch = args.batch_size // info.world
    if args.online and local_batch < args.k:
        raise UsageError(f"--k: online mixing of k={args.k} images needs a per-process batch "
                         f"of at least k, got {local_batch}")
    model_config = dict(data.model_config(args.student), teacher=args.teacher,
                        teacher_arch=tconfig.get("arch"), recipe=args.recipe,
                        objective=dataclasses.asdict(weights))
    state = tr.prepare_run(
        sargs.run_settings(args, "distill", args.student,
                           f"runs/distill-{args.student}-{data.name}", epochs, decays, steps),
        data.num_classes, data.shape[0], info, tr.run_arguments(vars(args)), model_config,
        labelled_images=n, mixed_images=n_mixed, epoch_slots=slots,
        kappa=(n_mixed / n) if n_mixed else None, epochs=epochs, lr_decay_epochs=decays,
        steps_per_epoch=steps, teacher_test_top1=tconfig.get("test_accuracy"),
        recipe=args.recipe, weights=dataclasses.asdict(weights))
    module = state.module
    teacher = teacher.to(device, memory_format=batch_format).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    mixer = None
    if args.online:
        from ..mixers import create_mixer

        mixer = create_mixer(args.online, teacher=teacher, config=config)
    bank = None
    if generated is not None:
        bank = tr.mixed_bank(generated, data.mean, data.std, data.real_padding)
    if info.is_main and generated is not None:
        for note in tr.generated_notes(generated, n, args.teacher):
            print(note, flush=True)
    if info.is_main:
        src = (f"mixed set {generated.path} ({n_mixed} images, kappa {n_mixed / n:.2f})"
               if generated is not None else f"online {args.online}" if args.online
               else "no mixed images")
        print(f"distill: {tconfig.get('arch')} -> {args.student} on {spec} ({n} labelled), "
              f"{src}; recipe {args.recipe or 'none'}: weights ce {weights.ce} kd {weights.kd} "
              f"mixed-ce {weights.mixed_ce} mixed-kd {weights.mixed_kd} T {weights.T}; {epochs} "
              f"epochs x {steps} steps of {args.batch_size}, lr {args.lr} decayed at {decays}; "
              f"{info.world} process(es) on {device}", flush=True)

    batches = _batches_fn(args, info, data, bank, mixer, teacher, slots, n_mixed, batch_format)
    step = _step_fn(module, teacher, weights, batch_format)
    tr.train(state, batches, step, lambda: data.test_batches(info, batch_format), "student ")
    return 0
