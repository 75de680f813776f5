"""Faults and bad inputs across the commands (issue 11): one writer per output folder (two real
processes; a killed holder's lock taken over), manifests checked against their shards and
shards against their own headers, a NaN teacher never written, settings checked before the
first byte, resume refusing changed hyperparameters, checkpoint errors and a full disk in one
line. Tiny inputs: a random ResNet-8 teacher, sets of a few dozen images."""
from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from supermix import mixed_set
from supermix.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from supermix.generation import generate
from supermix.mixed_set import (MANIFEST, CorruptShardError, ManifestError, MixedDataset,
                                check_shard_data, read_shard_info, verify_mixed_set)
from supermix.runtime import LOCK_NAME, OutputBusyError, lock_output
from testing import (ROOT, TINY, assert_one_line_error, make_teacher, run_cli, run_main,
                     subprocess_env)

pytestmark = pytest.mark.usefixtures("one_thread")

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")


def _gen_args(teacher: Path, out: Path, size: int = 64, *extra: str) -> list[str]:
    return ["generate", "--teacher", str(teacher), "--out", str(out), "--size", str(size),
            "--shard-size", "32", "--batch-size", "32", "--device", "cpu", "--threads", "1",
            "--no-progress", *extra]


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "supermix", *args], env=subprocess_env(),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``proc`` holds the lock of ``folder`` (its pid in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (folder / LOCK_NAME).read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, f"the holder exited first: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"{proc.pid} did not lock {folder} within {timeout}s")


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="module")
def nan_teacher(tmp_path_factory, teacher) -> Path:
    """The tiny teacher with every weight NaN: NaN logits on every image."""
    ckpt = load_checkpoint(teacher)
    state = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
             for k, v in ckpt["state_dict"].items()}
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save({"state_dict": state, "config": ckpt["config"]}, path)
    return path


def _set(folder: Path, teacher: Path, size: int = 64) -> Path:
    generate(folder, size, teacher=teacher, shard_size=16, batch_size=16, max_iters=5,
             device="cpu", progress=False, log=lambda msg: None)
    return folder


@pytest.fixture
def small_set(tmp_path, teacher) -> Path:
    return _set(tmp_path / "set", teacher)


# ------------------------------------------------------------------------------------ lock ----
def test_lock_is_exclusive_names_the_holder_and_is_removed(tmp_path):
    with lock_output(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusyError, match=rf"^out: {tmp_path} is in use by another "
                                                  rf"supermix process \(pid {os.getpid()},"):
            lock_output(tmp_path)
        assert lock.stale_pid is None
    assert not (tmp_path / LOCK_NAME).exists()
    with lock_output(tmp_path):  # free again
        pass


def test_two_generate_processes_on_one_out(tmp_path, teacher):
    """The second writer stops at once with one line naming the first's pid, whatever its
    settings; the first finishes a consistent set."""
    out = tmp_path / "set"
    first = _popen(_gen_args(teacher, out, 1024))
    try:
        _wait_for_lock(out, first)
        first.send_signal(signal.SIGSTOP)  # holding the lock in the middle of its work
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            same, other = pool.map(run_cli, [_gen_args(teacher, out, 1024),
                                             _gen_args(teacher, out, 1024, "--seed", "7")])
        first.send_signal(signal.SIGCONT)
        for proc in (same, other):
            assert_one_line_error(proc, f"{out} is in use by another supermix process",
                                  f"pid {first.pid}")
        assert first.wait(timeout=300) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert verify_mixed_set(out) == 32
    assert len(MixedDataset(out)) == 1024
    assert not (out / LOCK_NAME).exists()


def test_killed_holder_lock_is_taken_over(tmp_path, teacher):
    out = tmp_path / "set"
    first = _popen(_gen_args(teacher, out, 1024))
    _wait_for_lock(out, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / LOCK_NAME).read_text().strip() == str(first.pid)  # left behind, unlocked
    again = run_cli(_gen_args(teacher, out, 1024))
    assert again.returncode == 0, again.stderr
    assert f"took over the lock of pid {first.pid}" in again.stderr
    assert verify_mixed_set(out) == 32
    assert not (out / LOCK_NAME).exists()


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until killed."""
    code = ("import sys, time; from supermix.runtime import lock_output; "
            "lock = lock_output(sys.argv[1]); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_torchrun_job_on_a_locked_out_stops_on_every_rank(tmp_path, teacher):
    """Under torchrun rank 0 takes the lock for the job; when it is busy every rank stops
    (none waits at a barrier) and nothing is written."""
    from testing import run_torchrun

    out = tmp_path / "set"
    holder = _hold_lock(out)
    try:
        proc = run_torchrun(_gen_args(teacher, out, 64), timeout=240)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    # one error line per rank; counted as occurrences so the check is about the ranks stopping,
    # not about how the two processes' writes to one pipe happened to be ordered
    assert proc.stderr.count("supermix: error:") == 2, proc.stderr
    assert proc.stderr.count(f"in use by another supermix process (pid {holder.pid}") == 2, \
        proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


@needs_fmnist
@pytest.mark.parametrize("command", ["train-teacher", "distill", "train"])
def test_training_commands_lock_their_out(tmp_path, teacher, command):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        extra = ["--teacher", str(teacher)] if command == "distill" else []
        args = [command, *extra, "--arch" if command != "distill" else "--student", "resnet8",
                *TINY, "--epochs", "1", "--out", str(out)]
        proc = run_cli(args)
        assert_one_line_error(proc, "is in use by another supermix process",
                              f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------- manifest and shards ----
def _edit(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change,message", [
    (lambda m: m["shards"].pop(2), r"is marked complete but does not list shard 2"),
    (lambda m: m["shards"].pop(), r"does not list shard 3"),
    (lambda m: m["shards"].insert(1, dict(m["shards"][1])), r"lists shard 1 more than once"),
    (lambda m: m["shards"][1].update(count=20), r"says shard 1 holds 20 samples, but the "
                                                r"settings give it 16"),
    (lambda m: m["shards"][0].pop("sha256"), r"entry 0 lacks 'sha256'"),
    (lambda m: m["shards"][0].pop("count"), r"entry 0 lacks 'count'"),
    (lambda m: m.pop("shards"), r"lacks the 'shards' list"),
    (lambda m: m["shards"][3].update(file="shard-00002.safetensors"),
     r"entry 3 names file 'shard-00002.safetensors' for shard 3"),
    (lambda m: m["totals"].update(kept=70), r"totals say 70 samples, the shards 64"),
])
def test_manifest_edits_are_named(small_set, change, message):
    _edit(small_set, change)
    for verify in (True, False):
        with pytest.raises(ManifestError, match=message):
            MixedDataset(small_set, verify=verify)
    with pytest.raises(ManifestError, match=message):
        verify_mixed_set(small_set)


@pytest.mark.parametrize("change", [
    lambda m: m["shards"].pop(2),
    lambda m: m["shards"].insert(1, dict(m["shards"][1])),
    lambda m: m["shards"][1].update(count=20),
    lambda m: m["shards"][0].pop("sha256"),
    lambda m: m["shards"][0].pop("shard"),
], ids=["dropped", "duplicated", "count", "no-sha256", "no-shard"])
def test_resume_rebuilds_an_edited_manifest_from_the_shards(small_set, teacher, change):
    """A rerun trusts the shards (each checked against its own header), not the entries: it
    keeps them all, generates nothing and writes a manifest the reader accepts."""
    before = {p.name: sha256_file(p) for p in small_set.glob("shard-*")}
    _edit(small_set, change)
    manifest = generate(small_set, 64, teacher=teacher, shard_size=16, batch_size=16,
                        max_iters=5, device="cpu", progress=False, log=lambda msg: None)
    assert manifest["totals"]["this_run"]["kept"] == 0
    assert {p.name: sha256_file(p) for p in small_set.glob("shard-*")} == before
    assert len(MixedDataset(small_set)) == 64


def test_edited_counts_and_settings_are_caught_by_the_shard_headers(small_set):
    """Counts edited together with the settings agree with each other, not with the shards."""
    def change(m):
        m["config"]["shard_size"] = 17
        m["totals"]["kept"] = 64
        for e in m["shards"]:
            e["count"] = 17 if e["shard"] < 3 else 13
    _edit(small_set, change)
    with pytest.raises(CorruptShardError, match=r"shard shard-00000\.safetensors holds 16 "
                                                r"samples of shard 0, the manifest says 17"):
        MixedDataset(small_set)


def test_shard_header_disagreeing_with_its_entry_is_named(small_set):
    # Entry 1 and 2 swapped shard files (and sha256s): the headers say which shard they hold.
    first, second = small_set / mixed_set.shard_name(1), small_set / mixed_set.shard_name(2)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)

    def change(m):
        m["shards"][1]["sha256"], m["shards"][2]["sha256"] = (m["shards"][2]["sha256"],
                                                              m["shards"][1]["sha256"])
    _edit(small_set, change)
    with pytest.raises(CorruptShardError, match=r"shard shard-00001\.safetensors holds 16 "
                                                r"samples of shard 2, the manifest says 16 of "
                                                r"shard 1"):
        MixedDataset(small_set)


def test_shard_carries_its_own_checks(small_set):
    path = small_set / mixed_set.shard_name(1)
    info = read_shard_info(path)
    assert info["shard"] == 1 and info["count"] == 16
    assert info["config"]["seed"] == 0 and info["config"]["size"] == 64
    assert check_shard_data(path, info) is None
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert "differs from its header's" in check_shard_data(path, read_shard_info(path))


def test_shard_with_flipped_bytes_and_no_manifest_is_rejected(small_set, teacher):
    good = {p.name: sha256_file(p) for p in small_set.glob("shard-*")}
    (small_set / MANIFEST).unlink()
    victim = small_set / mixed_set.shard_name(2)
    blob = bytearray(victim.read_bytes())
    for i in range(len(blob) - 40, len(blob) - 20):
        blob[i] ^= 0xFF
    victim.write_bytes(bytes(blob))
    notes: list[str] = []
    generate(small_set, 64, teacher=teacher, shard_size=16, batch_size=16, max_iters=5,
             device="cpu", progress=False, log=notes.append)
    assert any(mixed_set.shard_name(2) in n and "not in the manifest" in n and
               "data sha256" in n for n in notes), notes
    assert {p.name: sha256_file(p) for p in small_set.glob("shard-*")} == good
    assert len(MixedDataset(small_set)) == 64


@needs_fmnist
def test_train_names_a_tampered_set_in_one_line(small_set, tmp_path):
    _edit(small_set, lambda m: m["shards"].insert(0, dict(m["shards"][0])))
    proc = run_cli(["train", "--arch", "resnet8", "--mixed", str(small_set), *TINY,
                    "--out", str(tmp_path / "run")])
    assert_one_line_error(proc, "lists shard 0 more than once")


# -------------------------------------------------------------------------- a NaN teacher ----
@pytest.mark.parametrize("extra", [["--keep-failed"], [], ["--mixer", "mixup"],
                                   ["--mixer", "cutmix"]], ids=["keep-failed", "drop", "mixup",
                                                                "cutmix"])
def test_nan_teacher_is_refused_before_writing(tmp_path, nan_teacher, extra):
    out = tmp_path / "out"
    proc = run_cli(_gen_args(nan_teacher, out, 32, *extra))
    assert_one_line_error(proc, "non-finite logits")
    assert "--max-iters" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--keep-failed"], [], ["--mixer", "mixup"]],
                         ids=["keep-failed", "drop", "mixup"])
def test_nan_from_the_mixer_writes_no_shard(tmp_path, nan_teacher, monkeypatch, capsys, extra):
    """A teacher that is finite on the real images but NaN on the mixed ones: solve / the
    mixer raise, the command says so in one line (no advice to raise --max-iters) and no
    shard is written."""
    import supermix.generation.run as run

    monkeypatch.setattr(run, "check_teacher_runs", lambda *a, **k: None)
    out = tmp_path / "out"
    assert run_main(_gen_args(nan_teacher, out, 32, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("supermix: error: shard 0:"), err
    assert "non-finite" in err and "--max-iters" not in err
    assert not list(out.glob("shard-*")) and not list(out.glob(".*.tmp"))
    assert json.loads((out / MANIFEST).read_text())["shards"] == []


def test_non_finite_fields_are_never_written(tmp_path, teacher, monkeypatch, capsys):
    """Should a mixer ever return NaN without raising, the shard is refused, not written."""
    import supermix.generation.run as run

    real = run.generate_shard

    def poisoned(*args, **kwargs):
        tensors, stats = real(*args, **kwargs)
        tensors["teacher_probs"][0, 0] = float("nan")
        return tensors, stats

    monkeypatch.setattr(run, "generate_shard", poisoned)
    out = tmp_path / "out"
    assert run_main(_gen_args(teacher, out, 32, "--mixer", "mixup")) == 2
    err = capsys.readouterr().err
    assert "shard 0: teacher_probs holds NaN or inf" in err
    assert not list(out.glob("shard-*"))


# -------------------------------------------------------------- settings before the first byte --
def test_generate_mask_larger_than_the_images(tmp_path, teacher, small_set):
    out = tmp_path / "new"
    proc = run_cli(_gen_args(teacher, out, 32, "--mask-size", "29"))
    assert_one_line_error(proc, "--mask-size", "28x28", "29")
    assert not out.exists()
    # A folder holding a set is left as it was, and the corrected command is not blocked.
    before = _files(small_set)
    proc = run_cli(["generate", "--teacher", str(teacher), "--out", str(small_set), "--size",
                    "64", "--shard-size", "16", "--batch-size", "16", "--max-iters", "5",
                    "--device", "cpu", "--mask-size", "29"])
    assert_one_line_error(proc, "--mask-size")
    assert _files(small_set) == before
    proc = run_cli(_gen_args(teacher, out, 32, "--mask-size", "28"))
    assert proc.returncode == 0, proc.stderr


@needs_fmnist
def test_distill_online_mask_larger_than_the_images(tmp_path, teacher):
    out = tmp_path / "run"
    proc = run_cli(["distill", "--teacher", str(teacher), "--online", "supermix",
                    "--mask-size", "29", *TINY, "--out", str(out)])
    assert_one_line_error(proc, "--mask-size", "28x28", "29")
    assert not out.exists()


# ----------------------------------------------------------------------------------- resume ----
def _teacher_run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["train-teacher", "--arch", "resnet8", *TINY, "--seed", "1", "--out", str(out),
                    *extra])


@needs_fmnist
def test_train_teacher_resume_refuses_a_changed_hyperparameter(tmp_path):
    out = tmp_path / "run"
    assert _teacher_run(out, "--epochs", "1", "--data", "fashion-mnist").returncode == 0
    proc = _teacher_run(out, "--epochs", "2", "--resume", "--lr", "0.05")
    assert_one_line_error(proc, "--lr: the checkpoint in", "was made with 0.1, got 0.05")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    # The same files spelt another way are the same data; --epochs may grow.
    proc = _teacher_run(out, "--epochs", "2", "--resume", "--data", f"fashion-mnist:{FMNIST}")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_same_data_spelt_two_ways():
    from supermix.data import resolved_spec
    from supermix.training.resume import _same_data

    assert resolved_spec(f"fashion-mnist:{FMNIST}") == resolved_spec("fashion-mnist")
    assert resolved_spec("fashion-mnist", f"{FMNIST}/../fashion-mnist") == "fashion-mnist"
    assert _same_data({"data": "fashion-mnist"}, {"data": "fashion-mnist",
                                                  "data_root": str(FMNIST)})
    assert not _same_data({"data": "fashion-mnist"}, {"data": "fashion-mnist:/elsewhere"})


# ------------------------------------------------------------------------------ checkpoints ----
class _Code:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(tmp_path: Path, teacher: Path) -> dict[str, Path]:
    ckpt = load_checkpoint(teacher)
    paths = {}
    paths["code"] = tmp_path / "code.pt"
    torch.save({"state_dict": _Code(tmp_path / "ran"), "config": ckpt["config"]}, paths["code"])
    paths["random"] = tmp_path / "random.pt"
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).numpy().tobytes()
    paths["random"].write_bytes(b"\x01" + noise)
    # Random bytes that start like a pickle of protocol 157: torch warns before it fails.
    paths["pickle_like"] = tmp_path / "pickle_like.pt"
    paths["pickle_like"].write_bytes(b"\x80\x9d" + noise)
    paths["list"] = tmp_path / "list.pt"
    torch.save({"state_dict": list(ckpt["state_dict"].values()), "config": ckpt["config"]},
               paths["list"])
    paths["classes"] = tmp_path / "classes.pt"
    torch.save({"state_dict": ckpt["state_dict"], "config": dict(ckpt["config"],
                                                                 num_classes="10")},
               paths["classes"])
    return paths


CHECKPOINT_CASES = {
    "code": ("holds pickled code (the global posix.system), which "
             "torch.load(weights_only=True) blocks; it was not run",),
    "random": ("is not a torch checkpoint",),
    "pickle_like": ("is not a torch checkpoint",),
    "list": ("wrong structure: 'state_dict' is a list, expected a dict of tensors",),
    "classes": ("wrong structure: config num_classes is '10' (str), expected an integer",),
}


def test_checkpoint_errors_say_what_is_wrong(tmp_path, teacher):
    paths = _bad_checkpoints(tmp_path, teacher)
    for name, fragments in CHECKPOINT_CASES.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(paths[name])
        message = str(info.value)
        assert "\n" not in message
        for fragment in fragments:
            assert fragment in message, (name, message)
        assert "weights_only=False" not in message and "file an issue" not in message
        if name == "code":
            assert "corrupt" not in message
    assert not (tmp_path / "ran").exists()


def test_checkpoint_errors_on_the_command_line(tmp_path, teacher):
    paths = _bad_checkpoints(tmp_path, teacher)
    for name, fragments in CHECKPOINT_CASES.items():
        proc = run_cli(_gen_args(paths[name], tmp_path / name, 16))
        assert_one_line_error(proc, *fragments)
        assert "weights_only=False" not in proc.stderr
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "ran").exists()


# ------------------------------------------------------------------------------- full disk ----
def _limited(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """``supermix ARGS`` with files limited to ``max_bytes`` (writes past it fail with EFBIG,
    as on a full disk; Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "supermix", *args], capture_output=True,
                          text=True, env=subprocess_env(), cwd=ROOT, timeout=300,
                          preexec_fn=limit)


def _one_os_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 1, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("supermix: error: cannot write "), err
    for fragment in fragments:
        assert fragment in err, err


def test_full_disk_during_a_shard_write(tmp_path, teacher):
    out = tmp_path / "set"
    proc = _limited(_gen_args(teacher, out, 64), 40_000)
    _one_os_error_line(proc, str(out / mixed_set.shard_name(0)), "File too large")
    assert not list(out.glob("shard-*")) and not list(out.glob(".*.tmp"))
    # Nothing lost: the same command without the limit finishes the set.
    assert run_cli(_gen_args(teacher, out, 64)).returncode == 0
    assert verify_mixed_set(out) == 2


@needs_fmnist
def test_full_disk_during_a_checkpoint_write(tmp_path):
    out = tmp_path / "run"
    proc = _limited(["train-teacher", "--arch", "resnet8", *TINY, "--epochs", "1", "--out",
                     str(out)], 100_000)
    _one_os_error_line(proc, str(out / "checkpoint.pt"), "File too large")
    assert not list(out.glob(".*.tmp"))
