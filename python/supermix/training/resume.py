"""A run's files: ``checkpoint.pt`` and ``--resume``, ``model.pt``, ``log.jsonl``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence


from ..checkpoint import CheckpointError, atomic_write_text, load_checkpoint
from ..data import resolved_spec
from ..errors import MissingFileError, UsageError
from ..runtime import DistInfo, lock_output_for
from .state import TrainState

__all__ = [
    "CHECKPOINT_NAME", "MODEL_NAME", "LOG_NAME", "RUNTIME_ARGS", "start_record", "run_arguments", "must_match",
    "check_out", "write_log", "try_resume",
]


CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "log.jsonl"

# Arguments that may differ between a run and its --resume (they do not change the result).
RUNTIME_ARGS = ("resume", "out", "device", "threads", "workers", "no_progress", "limit_test",
                "eval_every", "stop_after", "command_line", "func", "command")


def start_record(command: str, run_args: dict, config: dict, info, **extra) -> dict:
    """The log's ``start`` record: the command, its command line (``run_args["command_line"]``)
    and arguments, the model config, the world size and device, then ``extra``."""
    return {"command": command, "command_line": run_args.get("command_line"),
            "args": run_args, "config": config, "world_size": info.world,
            "device": str(info.device), **extra}


def run_arguments(values: Mapping[str, Any]) -> dict:
    """A run's arguments (a command's parsed flags, ``vars(args)``) as plain values, for the
    checkpoint and the log."""
    return {k: v for k, v in values.items() if k not in ("func", "command") and not callable(v)}


def must_match(run_args: dict) -> list[str]:
    """Keys of ``run_args`` a resumed run must share with its checkpoint."""
    return [k for k in run_args if k not in RUNTIME_ARGS]


def check_out(out: Path, resume: bool, info: DistInfo | None = None) -> Path:
    """Refuse to overwrite a run: ``out`` holding a checkpoint needs ``--resume``; returns
    ``out``. With ``info``, first take ``out``'s lock for the run (rank 0 under torchrun, held
    until :func:`supermix.runtime.shutdown_distributed`): a second run on the same ``--out``
    stops here, naming the holder's pid.

    Raises:
        OutputBusyError: another process writes to ``out``.
        UsageError: ``out`` holds a checkpoint and ``resume`` is False.
    """
    if info is not None:
        lock_output_for(info, out)
    if (out / CHECKPOINT_NAME).exists() and not resume:
        raise UsageError(f"out: {out} already holds {CHECKPOINT_NAME}; pass --resume to "
                         f"continue it or choose another --out")
    return out


def write_log(state: TrainState, end: dict | None = None) -> None:
    """Rewrite ``log.jsonl`` from the start record and the history (atomic, rank 0 only)."""
    if not state.info.is_main:
        return
    lines = [dict(event="start", **state.start_record)]
    resumes = sorted(state.resumes, key=lambda r: r["after_epoch"])
    for record in state.history:
        lines += [dict(event="resume", **r) for r in resumes
                  if r["after_epoch"] == record["epoch"] - 1]
        lines.append(dict(event="epoch", **record))
    done = state.history[-1]["epoch"] if state.history else 0
    lines += [dict(event="resume", **r) for r in resumes if r["after_epoch"] >= done]
    if end is not None:
        lines.append(dict(event="end", **end))
    atomic_write_text("".join(json.dumps(line) + "\n" for line in lines), state.out / LOG_NAME)


def _same_data(saved: dict, now: dict) -> bool:
    """Whether two runs' ``--data``/``--data-root`` name the same files (resolved folders, the
    default Fashion-MNIST folder spelt out or not)."""
    if saved.get("data") is None or now.get("data") is None:
        return saved.get("data") == now.get("data") and \
            saved.get("data_root") == now.get("data_root")
    try:
        return resolved_spec(saved["data"], saved.get("data_root")) == \
            resolved_spec(now["data"], now.get("data_root"))
    except UsageError:
        return False


def try_resume(state: TrainState, must_match: Sequence[str]) -> bool:
    """Load ``<out>/checkpoint.pt`` into ``state`` if it exists; returns whether it did.

    Raises:
        UsageError: the checkpoint was made with different ``must_match`` arguments.
    """
    path = state.out / CHECKPOINT_NAME
    if not path.exists():
        if state.info.is_main:
            print(f"resume: no {path} yet, starting from scratch", flush=True)
        return False
    ckpt = load_checkpoint(path, map_location="cpu")
    for key, kind in (("args", dict), ("optimizer", dict), ("epoch", int), ("history", list)):
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise CheckpointError(f"checkpoint: {path}: wrong structure: {key!r} is "
                                  f"{type(ckpt.get(key)).__name__}, expected {kind.__name__}")
    saved = ckpt["args"]
    keys = list(must_match)
    if "data" in keys and _same_data(saved, state.run_args):
        keys = [k for k in keys if k not in ("data", "data_root")]
    for key in keys:
        if saved.get(key) != state.run_args.get(key):
            raise UsageError(f"{key}: the checkpoint in {state.out} was made "
                             f"with {saved.get(key)!r}, got {state.run_args.get(key)!r}; "
                             f"resume with the same value or choose another --out")
    try:
        state.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise MissingFileError(f"resume: {path} does not fit this model: "
                               f"{str(e).splitlines()[0]}") from e
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint: {path}: wrong structure: its optimizer state does "
                              f"not fit this model ({e})") from e
    state.start_epoch = int(ckpt["epoch"])
    state.history = list(ckpt.get("history", []))
    state.elapsed = float(ckpt.get("elapsed_s", 0.0))
    state.start_record = dict(ckpt.get("start_record") or state.start_record)
    state.resumes = list(ckpt.get("resumes", [])) + [
        {"after_epoch": state.start_epoch,
         "command_line": state.run_args.get("command_line")}]
    if state.info.is_main:
        print(f"resuming {path} after epoch {state.start_epoch}", flush=True)
    return True


