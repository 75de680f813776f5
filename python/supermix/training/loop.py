"""The epoch loop shared by the training commands, with a per-step lr hook, and evaluation."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import save_checkpoint
from ..errors import UsageError
from ..runtime import (DistInfo, all_reduce_sum, autocast, init_distributed, progress,
                       memory_format, seed_everything, set_threads, shutdown_distributed)
from .resume import CHECKPOINT_NAME, LOG_NAME, MODEL_NAME, write_log
from .sync_bn import prepare_model
from .schedule import step_lr
from .state import TrainState

__all__ = [
    "run_command", "setup_model", "SGDSettings", "train", "make_sgd", "StepFn", "fit", "finish",
    "topk_correct", "evaluate",
]


def run_command(body: Callable[[DistInfo], int], device: str | None = None,
                threads: int | None = None) -> int:
    """Run a training command's ``body(info)`` inside the torchrun process group (if any),
    with ``threads`` torch threads (None: torch's choice)."""
    info = init_distributed(device)
    try:
        set_threads(threads)
        return body(info)
    finally:
        shutdown_distributed(info)


@dataclass(frozen=True)
class SGDSettings:
    """SGD with momentum and weight decay (the original code's optimiser)."""

    lr: float
    momentum: float = 0.9
    wd: float = 5e-4
    nesterov: bool = False


def setup_model(arch: str, num_classes: int, in_channels: int, info: DistInfo, seed: int,
                channels_last: bool, sgd: SGDSettings
                ) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The network ``arch`` initialised from ``seed``, on the device (SyncBatchNorm and DDP
    under torchrun), and its SGD. Returns (model, module to call, optimizer)."""
    from .. import models

    torch.manual_seed(seed)
    net = models.create(arch, num_classes=num_classes, in_channels=in_channels)
    model, module = prepare_model(net, info, channels_last)
    return model, module, make_sgd(model, sgd)


def make_sgd(model: nn.Module, sgd: SGDSettings) -> torch.optim.Optimizer:
    """SGD on every parameter (as the original code)."""
    return torch.optim.SGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                           weight_decay=sgd.wd, nesterov=bool(sgd.nesterov))


# step(batch) -> (loss, parts, n, correct, labelled): the loss to minimise, named scalar parts
# (unweighted means over the batch, for the log), the number of images in the batch, and how
# many of its ``labelled`` real images the model classified right (top-1); tensors or numbers.
StepFn = Callable[[Any], tuple[torch.Tensor, dict, Any, Any, Any]]


def fit(state: TrainState, batches: Callable[[int], Iterator[Any]], step: StepFn,
        test_batches: Callable[[], Iterable], extra_eval: Callable[[], dict] | None = None
        ) -> list[dict]:
    """Run epochs ``state.start_epoch .. state.epochs - 1``; returns the history.

    Each epoch: reseed the per-rank streams (seed, epoch, rank), set the lr, run
    ``step(batch)`` for each batch of ``batches(epoch)`` with backward and an SGD step, sum the
    metrics over ranks, evaluate every ``eval_every`` epochs and after the last, then (rank 0)
    write ``checkpoint.pt`` atomically and rewrite ``log.jsonl``.
    """
    info = state.info
    seed = state.seed
    batch_format = memory_format(state.channels_last)
    last = state.epochs
    if state.stop_after is not None:
        last = min(last, state.start_epoch + state.stop_after)
    for epoch in range(state.start_epoch, last):
        t0 = time.perf_counter()
        seed_everything(seed, "global", epoch, info.rank)
        lr = step_lr(state.lr, epoch, state.decay_epochs, state.decay_rate)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.module.train()
        names: list[str] = []
        sums = None
        bar = progress(state.steps_per_epoch, f"{state.name} {epoch + 1}/{state.epochs}",
                       state.show_progress and info.is_main)
        for i, batch in enumerate(batches(epoch)):
            if state.lr_at is not None:
                step_lr_now = state.lr_at(epoch, i)
                for group in state.optimizer.param_groups:
                    group["lr"] = step_lr_now
                if i == 0:
                    lr = step_lr_now
            with autocast(info.device, state.amp):
                loss, parts, n, correct, labelled = step(batch)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            if sums is None:
                names = ["loss", *parts]
                sums = torch.zeros(len(names) + 3, dtype=torch.float64, device=info.device)
            values = torch.stack([loss.detach().double(), *(torch.as_tensor(p).detach().double()
                                                            .to(info.device)
                                                            for p in parts.values())])
            sums[:len(names)] += values * float(n)
            sums[len(names)] += torch.as_tensor(correct, device=info.device).double()
            sums[len(names) + 1] += float(labelled)
            sums[len(names) + 2] += float(n)
            bar.update(1)
            if info.is_main and state.show_progress and i % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        bar.close()
        if sums is None:
            raise UsageError("no training batches: the epoch is shorter than one batch")
        all_reduce_sum(sums, info)
        record = _epoch_record(sums, names, epoch, lr, state.steps_per_epoch)
        train_s = time.perf_counter() - t0
        if (epoch + 1) % state.eval_every == 0 or epoch + 1 == state.epochs:
            result = evaluate(state.model, test_batches(), info.device, info, state.amp,
                              batch_format)
            record.update(test_top1=result["top1"], test_top5=result["top5"],
                          test_loss=result["loss"], test_images=result["images"])
            if extra_eval is not None:
                record.update(extra_eval())
        state.elapsed += time.perf_counter() - t0
        record.update(train_s=round(train_s, 3), epoch_s=round(time.perf_counter() - t0, 3),
                      elapsed_s=round(state.elapsed, 3))
        state.history.append(record)
        if info.is_main:
            _end_epoch(state, record, epoch, lr)
    info.barrier()
    return state.history


def _epoch_record(sums: torch.Tensor, names: list[str], epoch: int, lr: float,
                  steps_per_epoch: int) -> dict[str, Any]:
    """The epoch's log record from the summed step metrics (the parts' sums weighted by
    images, then correct, labelled and images).

    Raises:
        RuntimeError: the loss is not finite.
    """
    seen = max(float(sums[-1]), 1.0)
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "steps": (epoch + 1) * steps_per_epoch}
    for j, name in enumerate(names):
        record[name if name == "loss" else f"loss_{name}"] = float(sums[j]) / seen
    record["train_top1"] = float(sums[len(names)]) / max(float(sums[len(names) + 1]), 1.0)
    record["train_images"] = int(sums[-1])
    if not math.isfinite(record["loss"]):
        raise RuntimeError(f"the loss became {record['loss']} in epoch {epoch + 1}; lower --lr")
    return record


def _end_epoch(state: TrainState, record: dict, epoch: int, lr: float) -> None:
    """Rank 0: print the epoch's line, write ``checkpoint.pt`` atomically, rewrite the log."""
    test = (f" | test top1 {record['test_top1']:.4f} top5 {record['test_top5']:.4f}"
            if "test_top1" in record else "")
    print(f"{state.name} epoch {epoch + 1}/{state.epochs}: lr {lr:.4g} loss "
          f"{record['loss']:.4f} train top1 {record['train_top1']:.4f}{test} | "
          f"{record['epoch_s']:.1f}s", flush=True)
    save_checkpoint(state.out / CHECKPOINT_NAME, state.model, state.config,
                    optimizer=state.optimizer.state_dict(), epoch=epoch + 1,
                    history=state.history, elapsed_s=state.elapsed, args=state.run_args,
                    start_record=state.start_record, resumes=state.resumes)
    write_log(state)


def train(state: TrainState, batches: Callable[[int], Iterator[Any]], step: StepFn,
          test_batches: Callable[[], Iterable], what: str = "") -> dict:
    """:func:`fit`, then :func:`finish`; prints the final accuracy (``what``: whose). Returns
    the log's ``end`` record."""
    t0 = time.perf_counter()
    fit(state, batches, step, test_batches)
    end = finish(state, {"wall_s": round(time.perf_counter() - t0, 3)})
    if state.info.is_main and not end.get("stopped"):
        print(f"done: {what}test top1 {end['test_top1']:.4f} top5 {end['test_top5']:.4f} after "
              f"{end['epochs']} epochs ({state.elapsed / 60:.1f} min); wrote "
              f"{state.out / MODEL_NAME} and {state.out / LOG_NAME}", flush=True)
    return end


def finish(state: TrainState, extra: dict | None = None) -> dict:
    """Write ``model.pt`` (final weights, config with the final test accuracy) and the log's
    ``end`` record; returns that record."""
    if not state.history:
        raise UsageError(f"epochs: the checkpoint in {state.out} already has "
                         f"{state.start_epoch} epochs of {state.epochs}; nothing to do")
    final = state.history[-1]
    if final["epoch"] < state.epochs:
        if state.info.is_main:
            print(f"stopped after epoch {final['epoch']} of {state.epochs} (--stop-after); "
                  f"continue with --resume", flush=True)
        return {"epochs": final["epoch"], "stopped": True, "test_top1": final.get("test_top1"),
                "test_top5": final.get("test_top5")}
    end = {"epochs": final["epoch"], "test_top1": final.get("test_top1"),
           "test_top5": final.get("test_top5"), "elapsed_s": round(state.elapsed, 3),
           **(extra or {})}
    if state.info.is_main:
        config = dict(state.config, test_accuracy=final.get("test_top1"))
        save_checkpoint(state.out / MODEL_NAME, state.model, config)
        write_log(state, end)
    return end


def topk_correct(logits: torch.Tensor, targets: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of rows whose target is among the top-k logits, per k (k clipped to classes).

    logits: [B,n]; targets: int64 [B]. Returns float64 [len(ks)].
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]).double()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, info: DistInfo | None = None, amp: str = "none",
             memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Top-1, top-5 and mean cross-entropy of ``model`` over ``batches`` (this rank's shard),
    summed over ranks. Returns ``{"top1", "top5", "loss", "images"}`` (accuracies in [0, 1])."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with _eval_mode(model):
        for x, y in batches:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            sums[:2] += topk_correct(logits, y)
            sums[2] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[3] += y.shape[0]
    if info is not None:
        all_reduce_sum(sums, info)
    n = max(float(sums[3]), 1.0)
    return {"top1": float(sums[0]) / n, "top5": float(sums[1]) / n, "loss": float(sums[2]) / n,
            "images": int(sums[3])}


