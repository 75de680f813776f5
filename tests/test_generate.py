"""``supermix generate``, ``MixedDataset`` and ``supermix show``.

End-to-end runs use the shipped teacher (skipped, with the reason, where it has not been trained);
the file-format, resume and error checks use a tiny random teacher so they always run. Sizes are
small: the whole file runs in about a minute on two CPU cores.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from supermix.commands import cli
from supermix import generation as gen
from supermix.checkpoint import save_checkpoint, sha256_file
from supermix.errors import UsageError
from supermix import mixed_set
from supermix.mixed_set import CorruptShardError, MixedDataset, verify_mixed_set

from supermix.teachers import default_teacher_path
from testing import subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")
PYTHON = sys.executable


def _supermix(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "supermix", *args], env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def _shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.safetensors"))}


def _check_manifest(folder: Path, size: int) -> dict:
    """The manifest is complete, lists every shard once with the right count and sha256."""
    manifest = json.loads((folder / mixed_set.MANIFEST).read_text())
    assert manifest["complete"] is True
    quotas = gen.shard_quotas(size, manifest["config"]["shard_size"])
    assert [e["shard"] for e in manifest["shards"]] == list(range(len(quotas)))
    assert [e["count"] for e in manifest["shards"]] == quotas
    for e in manifest["shards"]:
        assert sha256_file(folder / e["file"]) == e["sha256"], e["file"]
    on_disk = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert on_disk == [e["file"] for e in manifest["shards"]]
    assert not list(folder.glob(".*.tmp")), "temporary files left behind"
    totals = manifest["totals"]
    assert totals["kept"] == size
    assert totals["generated"] >= size
    for key in ("success_rate", "mean_iters", "failed_dropped"):
        assert key in totals
    for key in ("k", "alpha", "lambda_s", "sigma", "mask_size", "seed", "max_iters", "mixer"):
        assert key in manifest["config"]
    assert manifest["teacher"]["sha256"] and manifest["data"]["size"] > 0
    return manifest


def _trained_teacher() -> Path:
    """The shipped teacher, or the checkpoint named by SUPERMIX_TEST_TEACHER (to run these tests
    against another trained Fashion-MNIST teacher)."""
    return Path(os.environ.get("SUPERMIX_TEST_TEACHER") or default_teacher_path())


@pytest.fixture(scope="session")
def real_teacher() -> Path:
    path = _trained_teacher()
    if not path.is_file():
        pytest.skip(f"the shipped teacher {path} has not been trained yet "
                    f"(supermix train-teacher writes it)")
    return path


def _generate(out: Path, teacher: Path, size: int, **kw):
    kw.setdefault("shard_size", 16)
    kw.setdefault("batch_size", 16)
    kw.setdefault("max_iters", 10)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return gen.generate(out, size, teacher=teacher, log=lambda msg: None, **kw)


# ------------------------------------------------------------------------------ end to end ----
def test_generate_real_teacher_end_to_end(tmp_path, real_teacher):
    size = 32
    manifest = _generate(tmp_path, real_teacher, size, shard_size=16, batch_size=16)
    _check_manifest(tmp_path, size)
    assert manifest["config"]["mixer"] == "supermix"
    assert manifest["totals"]["kept"] == size
    ds = MixedDataset(tmp_path)
    assert len(ds) == size
    sources = ds.read_field("sources")
    r = ds.read_field("r")
    assert sources.shape == (size, 2) and sources.dtype == torch.int64
    assert bool((sources[:, 0] != sources[:, 1]).all()), "a sample mixes an image with itself"
    assert 0 <= int(sources.min()) and int(sources.max()) < 60000
    # No sample twice: (sources, r) identify a sample.
    keys = {tuple(s) + tuple(w) for s, w in zip(sources.tolist(), r.tolist())}
    assert len(keys) == size
    success = ds.read_field("success")
    assert bool(success.all()), "failures must be dropped without --keep-failed"
    mixed = ds.read_field("mixed")
    assert mixed.dtype == torch.uint8 and mixed.shape == (size, 1, 28, 28)
    logits = ds.read_field("mask_logits")
    assert logits.shape == (size, 2, 8, 8)
    torch.testing.assert_close(ds.read_field("y_hat").sum(1), torch.ones(size))
    torch.testing.assert_close(ds.read_field("teacher_probs").sum(1), torch.ones(size))
    iters = ds.read_field("iters")
    assert int(iters.max()) <= 10
    t = manifest["totals"]
    assert t["generated"] == t["kept"] + t["failed_dropped"] + t["surplus_dropped"]
    assert t["images_per_s"] > 0


def test_mixed_image_is_the_stored_masks_applied_to_the_sources(tmp_path, real_teacher):
    """What is stored is self-consistent: mixing the data set's sources with the stored mask
    logits gives the stored image (up to uint8 rounding)."""
    from supermix import data as sdata
    from supermix_ext.reference import mix_ref

    _generate(tmp_path, real_teacher, 8, shard_size=8, batch_size=8)
    ds = MixedDataset(tmp_path)
    images, _ = sdata.load_uint8("fashion-mnist", train=True)
    src = images[ds.read_field("sources")].float() / 255  # [B,k,1,28,28] in pixel space
    mixed, _ = mix_ref(src, ds.read_field("mask_logits"))
    stored = ds.read_field("mixed").float() / 255
    assert (mixed - stored).abs().max() <= 0.5 / 255 + 1e-5


def test_kill_minus_9_then_resume(tmp_path, real_teacher):
    """kill -9 after the first shard lands, rerun the same command: the set equals an
    uninterrupted run's, byte for byte; nothing lost, nothing duplicated."""
    # SGD at the paper's learning rate converges slowly: every batch runs its 25 iterations,
    # so the run is slow enough to be caught between shards.
    args = ["generate", "--teacher", str(real_teacher), "--size", "48", "--shard-size", "16",
            "--batch-size", "16", "--method", "sgd", "--max-iters", "25", "--keep-failed",
            "--seed", "7", "--device", "cpu"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, "-m", "supermix", *args, "--out", str(killed)], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / mixed_set.shard_name(0)
    deadline = time.monotonic() + 240
    try:
        while not first.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"generate ended (rc {proc.returncode}) or stalled before shard 0")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / mixed_set.shard_name(2)).exists(), "the run finished before it was killed"
    manifest = json.loads((killed / mixed_set.MANIFEST).read_text())
    assert manifest["complete"] is False
    # A temporary file a kill could leave mid-write is discarded on resume.
    (killed / ".shard-00001.safetensors.abc123.tmp").write_bytes(b"partial")

    resumed = _supermix(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"removed \d+ partial temporary file", resumed.stderr), resumed.stderr
    full = tmp_path / "full"
    reference = _supermix(*args, "--out", str(full))
    assert reference.returncode == 0, reference.stderr

    _check_manifest(killed, 48)
    assert _shard_hashes(killed) == _shard_hashes(full)
    resumed_manifest = json.loads((killed / mixed_set.MANIFEST).read_text())
    assert resumed_manifest["totals"]["this_run"]["kept"] < 48  # shard 0 was not redone
    # A third run finds everything done.
    again = _supermix(*args, "--out", str(killed))
    assert again.returncode == 0 and "nothing left to generate" in again.stdout


def test_generate_mixes_with_the_deterministic_kernels(tmp_path, tiny_teacher, monkeypatch):
    """Shards must be the same bytes on a GPU too, where only deterministic mode avoids atomics."""
    import supermix_ext
    from supermix.generation import run

    seen = []
    original = run.generate_shard

    def recording(*args, **kwargs):
        seen.append(supermix_ext.deterministic_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "generate_shard", recording)
    assert not supermix_ext.deterministic_enabled()
    _generate(tmp_path, tiny_teacher, 32)
    assert seen == [True, True]
    assert not supermix_ext.deterministic_enabled()


def test_resume_from_shards_missing_in_manifest(tmp_path, tiny_teacher):
    """A run killed between a shard's rename and the manifest update (or a torchrun rank's
    shards) is resumed from the shard headers."""
    _generate(tmp_path, tiny_teacher, 40)
    before = _shard_hashes(tmp_path)
    manifest = json.loads((tmp_path / mixed_set.MANIFEST).read_text())
    manifest["shards"] = manifest["shards"][:1]
    manifest["complete"] = False
    (tmp_path / mixed_set.MANIFEST).write_text(json.dumps(manifest))
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*")}
    again = _generate(tmp_path, tiny_teacher, 40)
    assert again["totals"]["this_run"]["kept"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*")} == mtimes
    assert _shard_hashes(tmp_path) == before
    _check_manifest(tmp_path, 40)


def test_deterministic_shards_depend_on_seed(tmp_path, tiny_teacher):
    _generate(tmp_path / "a", tiny_teacher, 20, seed=3)
    _generate(tmp_path / "b", tiny_teacher, 20, seed=3)
    _generate(tmp_path / "c", tiny_teacher, 20, seed=4)
    assert _shard_hashes(tmp_path / "a") == _shard_hashes(tmp_path / "b")
    assert _shard_hashes(tmp_path / "a") != _shard_hashes(tmp_path / "c")
    # Shard j does not depend on how many shards there are: N=20 and N=40 share shard 0's
    # samples (the header, which records N, differs).
    from safetensors.torch import load_file
    _generate(tmp_path / "d", tiny_teacher, 40, seed=3)
    a = load_file(tmp_path / "a" / mixed_set.shard_name(0))
    d = load_file(tmp_path / "d" / mixed_set.shard_name(0))
    assert a.keys() == d.keys()
    for name in a:
        assert torch.equal(a[name], d[name]), name


def test_shard_index_and_mix_streams_are_independent():
    """Which images a shard draws and how it mixes them come from two unrelated streams. They
    were once one seed (``seed * 1000003 + j`` for both), so the same random numbers picked the
    images and their partners: ``randperm(3000)[0]`` and ``randperm(128)[0]`` then agree modulo
    8 (3000 and 128 share the factor 8) for every seed, a coupling no study should carry."""
    seeds = [gen.shard_seed(s, j, stream) for s in range(40) for j in range(3)
             for stream in ("index", "mix")]
    assert len(set(seeds)) == len(seeds)
    agree = 0
    for s in range(40):
        index_gen = torch.Generator().manual_seed(gen.shard_seed(s, 0, "index"))
        mix_gen = torch.Generator().manual_seed(gen.shard_seed(s, 0, "mix"))
        first_index = int(torch.randperm(3000, generator=index_gen)[0])
        first_partner = int(torch.randperm(128, generator=mix_gen)[0])
        agree += first_index % 8 == first_partner % 8
    # Independent streams agree 1 time in 8 (5 of 40 expected; P(>= 15) < 1e-4); the shared
    # seed made it 40 of 40.
    assert agree < 15
    with pytest.raises(ValueError, match="stream: expected 'index' or 'mix', got 'mixed'"):
        gen.shard_seed(0, 0, "mixed")


def test_generate_shard_draws_images_and_mixes_from_the_two_streams(tiny_teacher):
    """generate_shard takes its image draws from the "index" stream and hands the mixer a
    generator of the "mix" stream (an oracle that replays both)."""
    from supermix.generation import shards

    class Source:
        def __init__(self):
            self.drawn = []

        def __len__(self):
            return 50

        def batch(self, index):
            self.drawn.append(index.clone())
            return torch.randn(len(index), 1, 8, 8, generator=torch.Generator().manual_seed(0))

        def to_pixels(self, x):
            return x

        def split_index(self, index):
            return index

    seen = []

    class Mixer:
        def mix_batch(self, x, generator):
            seen.append(generator.initial_seed())
            result = mixers.MixUp(k=2, num_classes=3).mix_batch(x, generator)
            result.labels = torch.zeros(x.shape[0], dtype=torch.int64)
            result.probs = torch.full((x.shape[0], 3), 1 / 3)
            return result

    from supermix import mixers
    settings = dict(seed=7, mixer="mixup", k=2, batch_size=16, keep_failed=True, store="float16")
    source = Source()
    shards.generate_shard(2, 16, settings, source, Mixer(), torch.device("cpu"),
                          lambda *_: None)
    index_gen = torch.Generator().manual_seed(gen.shard_seed(7, 2, "index"))
    assert torch.equal(source.drawn[0], torch.randperm(50, generator=index_gen)[:16])
    assert seen == [gen.shard_seed(7, 2, "mix")]


# ------------------------------------------------------------------------------- corruption ----
def test_corrupt_shard_is_detected_and_named(tmp_path, tiny_teacher):
    _generate(tmp_path, tiny_teacher, 40)
    good = _shard_hashes(tmp_path)
    victim = tmp_path / mixed_set.shard_name(1)
    blob = bytearray(victim.read_bytes())
    for i in range(len(blob) - 64, len(blob) - 32):  # flip bytes inside the tensor data
        blob[i] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.raises(CorruptShardError, match=mixed_set.shard_name(1)):
        MixedDataset(tmp_path)
    with pytest.raises(CorruptShardError, match=mixed_set.shard_name(1)):
        verify_mixed_set(tmp_path)
    # Without verification it still opens; verify() names the shard on demand.
    ds = MixedDataset(tmp_path, verify=False)
    with pytest.raises(CorruptShardError, match="shard-00001.safetensors is corrupt"):
        ds.verify()
    # A rerun notices the mismatch and regenerates that shard, identically.
    notes: list[str] = []
    gen.generate(tmp_path, 40, teacher=tiny_teacher, shard_size=16, batch_size=16, max_iters=10,
                 device="cpu", progress=False, log=notes.append)
    assert any(mixed_set.shard_name(1) in n and "sha256" in n for n in notes), notes
    assert _shard_hashes(tmp_path) == good
    MixedDataset(tmp_path)


def test_missing_shard_is_named(tmp_path, tiny_teacher):
    _generate(tmp_path, tiny_teacher, 20)
    (tmp_path / mixed_set.shard_name(1)).unlink()
    with pytest.raises(CorruptShardError, match=r"shard-00001\.safetensors is missing"):
        MixedDataset(tmp_path)


# --------------------------------------------------------------------------------- torchrun ----
def test_torchrun_two_processes_equal_single_process(tmp_path, request):
    teacher = _trained_teacher()
    if not teacher.is_file():
        teacher = request.getfixturevalue("tiny_teacher")
    common = ["--teacher", str(teacher), "--size", "40", "--shard-size", "8", "--batch-size", "8",
              "--max-iters", "10", "--seed", "5", "--device", "cpu"]
    two = tmp_path / "two"
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide.
    proc = subprocess.Popen(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "supermix", "generate", *common, "--out", str(two)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun generation timed out:\n{stdout}\n{stderr}")
    assert proc.returncode == 0, stdout + stderr
    assert stdout.count("supermix generate:") == 1, "only rank 0 reports"
    one = tmp_path / "one"
    single = _supermix("generate", *common, "--out", str(one))
    assert single.returncode == 0, single.stderr

    manifest = _check_manifest(two, 40)
    assert manifest["runtime"]["world_size"] == 2
    assert len(manifest["shards"]) == 5
    ds = MixedDataset(two)
    assert len(ds) == 40
    sources, r = ds.read_field("sources"), ds.read_field("r")
    assert len({tuple(s) + tuple(w) for s, w in zip(sources.tolist(), r.tolist())}) == 40
    assert _shard_hashes(two) == _shard_hashes(one)


# --------------------------------------------------------------------------- settings / errors --
def test_other_settings_in_same_dir_is_an_error(tmp_path, tiny_teacher, capsys):
    _generate(tmp_path, tiny_teacher, 20)
    argv = ["generate", "--teacher", str(tiny_teacher), "--out", str(tmp_path), "--size", "20",
            "--shard-size", "16", "--batch-size", "16", "--max-iters", "11", "--alpha", "2",
            "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("supermix: error:")
    assert "max_iters" in err and "alpha" in err and "k (" not in err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert json.loads((tmp_path / mixed_set.MANIFEST).read_text())["config"]["max_iters"] == 11


def _bad_teachers(tmp_path: Path) -> dict[str, Path]:
    from supermix import models
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    rgb = tmp_path / "rgb.pt"
    save_checkpoint(rgb, models.create("resnet8", num_classes=10, in_channels=3),
                    {"arch": "resnet8", "num_classes": 10, "in_channels": 3})
    many = tmp_path / "c100.pt"
    save_checkpoint(many, models.create("resnet8", num_classes=100, in_channels=1),
                    {"arch": "resnet8", "num_classes": 100, "in_channels": 1})
    return {"garbage": garbage, "rgb": rgb, "c100": many}


@pytest.mark.parametrize("case,expected", [
    ("missing_teacher", "no file at"),
    ("garbage_teacher", "is not a torch checkpoint"),
    ("channels", "3-channel images"),
    ("classes", "100 classes"),
    ("unwritable_out", "cannot write to"),
    ("size_zero", "--size: expected an integer > 0, got 0"),
    ("size_negative", "--size: expected an integer > 0, got -5"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, tiny_teacher, capsys, case, expected):
    bad = _bad_teachers(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = {"teacher": str(tiny_teacher), "out": str(tmp_path / "out"), "size": "8"}
    extra: list[str] = []
    if case == "missing_teacher":
        argv["teacher"] = str(tmp_path / "nope.pt")
    elif case == "garbage_teacher":
        argv["teacher"] = str(bad["garbage"])
    elif case == "channels":
        argv["teacher"] = str(bad["rgb"])
    elif case == "classes":
        argv["teacher"] = str(bad["c100"])
    elif case == "unwritable_out":
        argv["out"] = str(blocker / "sub")
    elif case == "size_zero":
        argv["size"] = "0"
    elif case == "size_negative":
        argv["size"] = "-5"
    status = cli.main(["generate", "--teacher", argv["teacher"], "--out", argv["out"],
                       "--size", argv["size"], "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("supermix: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err
    if case != "unwritable_out":
        assert not (tmp_path / "out").exists(), "a failed run must not create the output folder"


@pytest.mark.parametrize("flag,value", [("--preset", "mnist"), ("--solver-preset", "mnist"),
                                        ("--mixer", "fmix"), ("--method", "adam"),
                                        ("--store", "int4"), ("--split", "val"),
                                        ("--backend", "fast")])
def test_enumerated_flags_are_choices(tmp_path, tiny_teacher, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["generate", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "out"),
                  "--size", "8", flag, value])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# A library call's errors name the setting (the command line reports them under the flag).
@pytest.mark.parametrize("key,value,expected", [("preset", "mnist", "^preset: expected one of"),
                                                ("mixer", "fmix", "^mixer: expected one of"),
                                                ("method", "adam", "^solve: method must be one of")])
def test_library_call_checks_enumerated_settings(tmp_path, tiny_teacher, key, value, expected):
    with pytest.raises(UsageError, match=expected):
        gen.generate(tmp_path / "out", 8, teacher=tiny_teacher, device="cpu", **{key: value})


def test_method_choices_follow_the_solver():
    from supermix.solver import DEFAULT_METHOD, METHODS

    parser = cli.build_parser()
    for method in METHODS:
        args = parser.parse_args(["generate", "--out", "o", "--size", "1", "--method", method])
        assert args.method == method
    settings, _ = gen.GenerateSettings(out="o", size=1).solver_settings()
    assert settings["method"] == DEFAULT_METHOD


def test_bad_argument_in_a_real_process(tmp_path):
    """The same through ``python -m supermix``: exit status 2, one line, no traceback."""
    proc = _supermix("generate", "--teacher", str(tmp_path / "missing.pt"), "--out",
                     str(tmp_path / "o"), "--size", "4", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("supermix: error: --teacher: no file at")


def test_limit_mixes_only_the_first_images(tmp_path, tiny_teacher):
    m = _generate(tmp_path / "first", tiny_teacher, 24, limit=40)
    sources = MixedDataset(tmp_path / "first").read_field("sources")
    assert int(sources.max()) < 40
    assert m["config"]["dataset_size"] == 40 and m["data"]["size"] == 40
    assert m["data"]["limit"] == 40 and "subset" not in m["config"]
    # The same set from the command line, resumed: nothing left to do, same shards.
    status = cli.main(["generate", "--teacher", str(tiny_teacher), "--out",
                       str(tmp_path / "first"), "--size", "24", "--limit", "40", "--shard-size",
                       "16", "--batch-size", "16", "--max-iters", "10", "--device", "cpu",
                       "--no-progress"])
    assert status == 0


def test_limit_index_file(tmp_path, tiny_teacher, capsys):
    index = tmp_path / "index.txt"
    chosen = [5, 100, 7, 3000, 42, 59999, 12, 8]
    index.write_text("# a few images\n" + "\n".join(map(str, chosen)) + "\n")
    m = _generate(tmp_path / "set", tiny_teacher, 8, limit=str(index))
    sources = MixedDataset(tmp_path / "set").read_field("sources")
    assert set(sources.flatten().tolist()) <= set(chosen)
    assert m["config"]["dataset_size"] == len(chosen) and len(m["config"]["subset"]) == 64
    index.write_text("5 5 7\n")
    with pytest.raises(UsageError, match="^limit: "):
        _generate(tmp_path / "bad", tiny_teacher, 8, limit=str(index))
    with pytest.raises(SystemExit):
        cli.main(["generate", "--out", str(tmp_path / "x"), "--size", "4", "--limit",
                  str(tmp_path / "missing.txt")])
    assert "--limit" in capsys.readouterr().err


def test_presets_and_overrides():
    s, values = gen.resolve_settings("imagenet")
    assert (s["k"], s["mask_size"], s["sigma"], s["alpha"], s["lambda_s"]) == (3, 16, 2.0, 3.0, 25.0)
    assert values == gen.SOLVER_PRESETS["imagenet"]
    s, _ = gen.resolve_settings("cifar100", sigma=0.5, k=None)
    assert (s["k"], s["mask_size"], s["sigma"]) == (2, 8, 0.5)
    s, _ = gen.resolve_settings(None)
    assert s["k"] == 2 and s["mask_size"] == 8


def test_preset_recorded_in_manifest(tmp_path, tiny_teacher):
    m = _generate(tmp_path, tiny_teacher, 8, preset="imagenet", mask_size=7, shard_size=8,
                  batch_size=8)
    assert m["preset"] == "imagenet" and m["preset_values"]["mask_size"] == 16
    assert (m["config"]["k"], m["config"]["mask_size"], m["config"]["sigma"]) == (3, 7, 2.0)
    assert MixedDataset(tmp_path).read_field("mask_logits").shape == (8, 3, 7, 7)


def test_drop_guard_stops_with_a_clear_error(tmp_path, tiny_teacher, monkeypatch):
    """When (almost) nothing reaches the criterion, a shard gives up instead of looping."""
    from supermix.generation import run as generation_run

    real_make = gen.make_mixer

    def never_succeeds(s, teacher, backend):
        mixer = real_make(s, teacher, backend)
        inner = mixer.mix_batch

        def mix_batch(x, generator=None):
            result = inner(x, generator)
            result.success = torch.zeros_like(result.success)
            return result
        mixer.mix_batch = mix_batch
        return mixer

    monkeypatch.setattr(generation_run, "make_mixer", never_succeeds)
    with pytest.raises(gen.GenerationError, match="--keep-failed"):
        _generate(tmp_path, tiny_teacher, 4, shard_size=4, batch_size=4, max_iters=0)
    # With --keep-failed the failures are kept and flagged.
    m = _generate(tmp_path / "kept", tiny_teacher, 4, shard_size=4, batch_size=4, max_iters=0,
                  keep_failed=True)
    assert m["totals"]["kept"] == 4
    assert not bool(MixedDataset(tmp_path / "kept").read_field("success").any())


# ------------------------------------------------------------------------- mixers and files ----
@pytest.mark.parametrize("mixer", ["mixup", "cutmix"])
def test_blind_mixers_are_labelled_by_the_teacher(tmp_path, tiny_teacher, mixer):
    m = _generate(tmp_path, tiny_teacher, 10, mixer=mixer, shard_size=10, batch_size=10)
    assert m["config"]["mixer"] == mixer
    ds = MixedDataset(tmp_path)
    assert not ds.has_field("mask_logits")
    assert int(ds.read_field("iters").sum()) == 0
    probs = ds.read_field("teacher_probs")
    torch.testing.assert_close(probs.sum(1), torch.ones(10))
    assert m["totals"]["failed_dropped"] == 0  # blind mixers never drop


def test_mixed_dataset_items(tmp_path, tiny_teacher):
    _generate(tmp_path, tiny_teacher, 20, store="float16")
    ds = MixedDataset(tmp_path)
    assert len(ds) == 20
    image, label = ds[19]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label.shape == (10,) and label.dtype == torch.float32
    torch.testing.assert_close(label.sum(), torch.tensor(1.0))
    _, y_hat = MixedDataset(tmp_path, label="y_hat", verify=False)[3]
    torch.testing.assert_close(y_hat.sum(), torch.tensor(1.0))
    normed, _ = MixedDataset(tmp_path, normalize=True, verify=False)[19]
    torch.testing.assert_close(normed, (image - 0.2860) / 0.3530, atol=1e-4, rtol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and y.shape == (8, 10)
    assert ds.read_field("mixed").dtype == torch.float16
    with pytest.raises(IndexError):
        ds[20]


def test_incomplete_set_is_refused(tmp_path, tiny_teacher):
    _generate(tmp_path, tiny_teacher, 20)
    manifest = json.loads((tmp_path / mixed_set.MANIFEST).read_text())
    manifest["complete"] = False
    (tmp_path / mixed_set.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="has not finished"):
        MixedDataset(tmp_path)
    assert len(MixedDataset(tmp_path, allow_incomplete=True)) == 20


def test_export_png_and_show(tmp_path, tiny_teacher, capsys):
    out = tmp_path / "set"
    _generate(out, tiny_teacher, 12, export_png=True, shard_size=8, batch_size=8)
    pngs = sorted((out / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:08d}.png" for i in range(12)]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = tmp_path / "show.png"
    assert cli.main(["show", str(out), "--out", str(picture), "--num", "3"]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_export_png_added_on_rerun(tmp_path, tiny_teacher):
    _generate(tmp_path, tiny_teacher, 10, shard_size=8, batch_size=8)
    assert not (tmp_path / "png").exists()
    _generate(tmp_path, tiny_teacher, 10, shard_size=8, batch_size=8, export_png=True)
    assert len(list((tmp_path / "png").glob("*.png"))) == 10
