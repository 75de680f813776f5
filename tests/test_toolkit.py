"""The solver toolkit (docs/TOOLKIT.md): SolverConfig, and the objective, success, weights and
sources plug-ins of solve, against oracles written here; the document's examples are run."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import supermix
from supermix import SolverConfig, SuperMix, MixUp
from supermix.solver import (METHODS, OBJECTIVES, SolveState, kl_to_target, paper_success,
                             success_margin_hinge, total_variation, MARGIN_GD_HINGE_WEIGHT,
                             MARGIN_GD_MARGIN)

ROOT = Path(__file__).resolve().parents[1]


class TinyTeacher(nn.Module):
    """A fixed, seeded linear teacher on 1x8x8 images, 6 classes."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(6, 64, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


def _images(n=12, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ config ----
def test_config_defaults_are_the_papers_settings():
    c = SolverConfig()
    assert (c.k, c.alpha, c.lambda_s, c.sigma, c.mask_size, c.max_iters, c.min_iters, c.method,
            c.lr, c.lambda_tv) == (2, 3.0, 25.0, 1.0, (8, 8), 50, 0, "margin_gd", 0.1, 250.0)
    assert SolverConfig(mask_size=(4, 6)).mask_size == (4, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.k = 3


@pytest.mark.parametrize("changes,message", [
    (dict(k=1), "solve: k must be an int >= 2, got 1"),
    (dict(alpha=0.0), "solve: alpha must be a finite number > 0, got 0.0"),
    (dict(lambda_s=float("nan")), "solve: lambda_s must be a finite number >= 0, got nan"),
    (dict(method="adam"), "solve: method must be one of ('margin_gd', 'newton_sp', 'newton', 'sgd'), got 'adam'"),
    (dict(max_iters=2, min_iters=3), "solve: min_iters must be an int in [0, max_iters=2], got 3"),
    (dict(mask_size="8"), "solve: mask_size must be an int or a pair (h, w) of ints, got '8'"),
])
def test_config_checks_once_when_made(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SolverConfig(**changes)


def test_replace_and_overrides():
    c = SolverConfig(max_iters=20)
    assert c.replace(k=3).k == 3 and c.replace(k=3).max_iters == 20 and c.k == 2
    with pytest.raises(TypeError, match=re.escape("solve: unknown option(s) ['lamda_s']; valid options:")):
        c.replace(lamda_s=1.0)
    with pytest.raises(TypeError, match="solve: config must be a SolverConfig, got dict"):
        supermix.solve(TinyTeacher(), _images(), {"k": 2})
    a = supermix.solve(TinyTeacher(), _images(), c, torch.Generator().manual_seed(0), k=3)
    b = supermix.solve(TinyTeacher(), _images(), SolverConfig(k=3, max_iters=20),
                       torch.Generator().manual_seed(0))
    assert a.sources.shape == (12, 3) and torch.equal(a.mask_logits, b.mask_logits)


def test_mixers_take_a_config():
    teacher = TinyTeacher()
    mixer = SuperMix(teacher, config=SolverConfig(k=3, alpha=2.0, max_iters=4, mask_size=4))
    assert (mixer.k, mixer.alpha, mixer.config.max_iters, mixer.config.mask_size) == (3, 2.0, 4, (4, 4))
    # An explicit keyword wins over the config's value.
    assert SuperMix(teacher, k=2, config=SolverConfig(k=3)).config.k == 2
    result = mixer.mix_batch(_images(), torch.Generator().manual_seed(0))
    again = supermix.solve(teacher, _images(), mixer.config, torch.Generator().manual_seed(0))
    assert torch.equal(result.mask_logits, again.mask_logits) and int(result.iters.max()) <= 4
    blind = MixUp(num_classes=6, config=SolverConfig(k=3, alpha=0.5))
    assert (blind.k, blind.alpha) == (3, 0.5)
    assert (MixUp(num_classes=6).k, MixUp(num_classes=6).alpha) == (2, 1.0)
    with pytest.raises(TypeError, match="SuperMix: config must be a SolverConfig, got dict"):
        SuperMix(teacher, config={"k": 3})


# ----------------------------------------------------------------------------- plug-ins ----
def _written_out(method: str):
    """Each method's loss written from the state's fields, independently of OBJECTIVES."""
    def objective(state: SolveState) -> torch.Tensor:
        q = state.log_probs
        kl = (state.targets * (state.targets.clamp_min(1e-30).log() - q)).where(
            state.targets > 0, torch.zeros_like(q)).sum(1)
        loss = kl + state.config.lambda_s * state.sparsity
        if method in ("newton", "sgd"):
            loss = loss + state.config.lambda_tv * total_variation(state.mask_logits, state.image_size)
        if method == "margin_gd":
            loss = loss + MARGIN_GD_HINGE_WEIGHT * success_margin_hinge(q, state.present, MARGIN_GD_MARGIN)
        return loss
    return objective


@pytest.mark.parametrize("method", METHODS)
def test_a_written_out_objective_reproduces_the_methods_own(method):
    teacher, x = TinyTeacher(), _images()
    config = SolverConfig(method=method, max_iters=6, mask_size=4, lr=1.0)
    ours = supermix.solve(teacher, x, config, torch.Generator().manual_seed(1),
                          objective=_written_out(method))
    builtin = supermix.solve(teacher, x, config, torch.Generator().manual_seed(1))
    assert OBJECTIVES[method] is not None
    torch.testing.assert_close(ours.mask_logits, builtin.mask_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.iters, builtin.iters) and torch.equal(ours.success, builtin.success)
    assert int(builtin.iters.max()) > 0  # the comparison covers steps, not only the start


def test_a_success_rule_that_always_holds_stops_every_sample_at_once():
    seen = []

    def always(state):
        seen.append(state.iteration)
        return torch.ones(state.rows.shape[0], dtype=torch.bool)

    result = supermix.solve(TinyTeacher(), _images(), success=always, max_iters=5)
    assert seen == [0] and bool((result.iters == 0).all()) and bool(result.success.all())
    assert bool((result.mask_logits == 0).all())


def test_a_success_rule_that_never_holds_runs_to_max_iters():
    never = lambda s: torch.zeros(s.rows.shape[0], dtype=torch.bool)  # noqa: E731
    result = supermix.solve(TinyTeacher(), _images(), success=never, max_iters=3)
    assert bool((result.iters == 3).all()) and not bool(result.success.any())


def test_user_weights_come_back_as_r_and_in_the_targets():
    teacher, x = TinyTeacher(), _images()
    r = torch.tensor([[0.2, 0.8]] * 6 + [[0.5, 0.5]] * 6)
    result = supermix.solve(teacher, x, weights=r, max_iters=2)
    assert torch.equal(result.weights, r)
    labels = teacher(x).argmax(1)
    for b in range(12):
        want = torch.zeros(6)
        for i in range(2):
            want[labels[result.sources[b, i]]] += r[b, i]
        assert torch.allclose(result.targets[b], want)


def test_a_linear_objective_moves_the_masks_as_computed_by_hand():
    """objective = sum of source 0's mask logits: its gradient is 1 there and 0 elsewhere, so
    one sgd step at lr 0.5 sets source 0's logits to -0.5 and leaves source 1's at 0."""
    def linear(state):
        return state.mask_logits[:, 0].sum(dim=(1, 2))

    result = supermix.solve(TinyTeacher(), _images(), method="sgd", lr=0.5, max_iters=1,
                            min_iters=1, mask_size=4, objective=linear)
    assert bool((result.iters == 1).all())
    assert torch.equal(result.mask_logits[:, 0], torch.full((12, 4, 4), -0.5))
    assert torch.equal(result.mask_logits[:, 1], torch.zeros(12, 4, 4))


def test_the_state_holds_what_the_contract_says():
    teacher, x = TinyTeacher(), _images()
    states = []

    def look(state):
        states.append(state)
        return paper_success(state)

    result = supermix.solve(teacher, x, success=look, max_iters=3, min_iters=1, mask_size=4)
    first = states[0]
    a = first.rows.shape[0]
    assert a == 12 and torch.equal(first.rows, torch.arange(12))
    assert first.mask_logits.shape == (a, 2, 4, 4) and first.mask_logits.requires_grad
    assert first.mixed.shape == (a, 1, 8, 8) and first.mixed.requires_grad
    assert first.log_probs.requires_grad and not first.probs.requires_grad
    torch.testing.assert_close(first.probs, F.softmax(teacher(first.mixed.detach()), 1))
    assert torch.equal(first.weights, result.weights) and torch.equal(first.targets, result.targets)
    assert torch.equal(first.source_labels, result.labels[result.sources])
    assert torch.equal(first.present.sum(1), first.num_present)
    assert first.image_size == (8, 8) and first.iteration == 0
    assert [s.iteration for s in states] == list(range(len(states)))
    torch.testing.assert_close(kl_to_target(first), F.kl_div(first.log_probs, first.targets,
                                                             reduction="none").sum(1))


@pytest.mark.parametrize("plugin,fn,message", [
    ("objective", lambda s: s.sparsity[:1], "solve: objective must return a finite float tensor [A=12]"),
    ("objective", lambda s: s.sparsity * float("nan"), "solve: objective returned non-finite values"),
    ("objective", lambda s: torch.ones(s.rows.shape[0]), "solve: objective's value has no gradient"),
    ("success", lambda s: s.probs[:, 0], "solve: success must return a bool tensor [A=12]"),
    ("success", "no", "solve: success must be a callable f(state), got str"),
])
def test_a_bad_plug_in_is_named(plugin, fn, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        supermix.solve(TinyTeacher(), _images(), max_iters=2, min_iters=1, **{plugin: fn})


@pytest.mark.parametrize("weights,message", [
    (torch.full((12, 3), 1 / 3), "solve: weights must be a float tensor [N=12, k=2], got [12, 3]"),
    (torch.tensor([[1.2, -0.2]] * 12), "solve: weights must be finite and >= 0"),
    (torch.full((12, 2), 0.4), "solve: weights' rows must sum to 1"),
])
def test_bad_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        supermix.solve(TinyTeacher(), _images(), weights=weights)


# ---------------------------------------------------------------------------- the guide ----
def test_the_toolkit_examples_run():
    """docs/TOOLKIT.md's code blocks, in order, in one namespace (their asserts are the checks)."""
    from supermix.data import load_tensors

    try:
        load_tensors("fashion-mnist", train=False, limit=1)
    except Exception as e:  # noqa: BLE001 - the data package is installed by scripts/setup.sh
        pytest.fail(f"Fashion-MNIST is needed for the examples: {e}")
    text = (ROOT / "docs" / "TOOLKIT.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/TOOLKIT.md", "exec"), namespace)


# ------------------------------------------------------------------- the commands' flags ----
def _parser(command):
    from supermix.commands import cli

    return cli.build_parser()._subparsers._group_actions[0].choices[command]


def _option(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


# The flags each command takes for the solver, by setting (an independent list: the commands'
# documented flags, README "Commands").
COMMAND_SOLVER_FLAGS = {
    "generate": ("k", "alpha", "lambda_s", "sigma", "mask_size", "max_iters", "min_iters",
                 "method"),
    "distill": ("k", "alpha", "lambda_s", "sigma", "mask_size", "max_iters", "method"),
}


@pytest.mark.parametrize("command", sorted(COMMAND_SOLVER_FLAGS))
def test_every_commands_solver_flags_come_from_the_config(command):
    from supermix.config import setting_help

    parser = _parser(command)
    paper = dict(k="2", alpha="3", lambda_s="25", sigma="1", mask_size="8", max_iters="50",
                 min_iters="0", method="margin_gd")
    for name in COMMAND_SOLVER_FLAGS[command]:
        action = _option(parser, "--" + name.replace("_", "-"))
        assert action.default is None, name  # "not given": the config (or preset) decides
        assert setting_help(name) in action.help and f"(default {paper[name]})" in action.help
    parsed = parser.parse_args(["--lambda-s", "7.5", "--mask-size", "4", "--k", "3",
                                "--method", "newton_sp"] + (["--out", "x", "--size", "8"]
                                                            if command == "generate" else []))
    assert (parsed.lambda_s, parsed.mask_size, parsed.k, parsed.method) == (7.5, 4, 3, "newton_sp")
    assert type(parsed.lambda_s) is float and type(parsed.k) is int and type(parsed.mask_size) is int


@pytest.mark.parametrize("values,message", [
    (dict(k=1), "--k: expected an int >= 2, got 1"),
    (dict(alpha=0.0), "--alpha: expected a finite number > 0, got 0.0"),
    (dict(lambda_s=-1.0), "--lambda-s: expected a finite number >= 0, got -1.0"),
    (dict(sigma=float("inf")), "--sigma: expected a finite number >= 0, got inf"),
    (dict(max_iters=-2), "--max-iters: expected an int >= 0, got -2"),
    (dict(max_iters=3, min_iters=4), "--min-iters: expected an int in [0, max_iters=3], got 4"),
])
def test_solver_config_names_the_flag(values, message):
    """The library names the setting; the command line reports it under the flag."""
    from supermix.commands.args import solver_config
    from supermix.commands.cli import usage_message
    from supermix.config import SettingError
    from supermix.errors import UsageError

    with pytest.raises(SettingError) as info:
        solver_config(values)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    name = message.split(":")[0][2:].replace("-", "_")
    assert info.value.setting == name and str(info.value).startswith(f"solve: {name} must be ")
    assert usage_message(info.value) == message
    # Unset values are the config's; set ones replace them.
    assert solver_config(dict(k=None, lambda_s=3.0)) == SolverConfig(lambda_s=3.0)


@pytest.mark.parametrize("argv,message", [
    (["generate", "--size", "8", "--alpha", "0"], "--alpha: expected a finite number > 0, got 0.0"),
    (["generate", "--size", "8", "--k", "1"], "--k: expected an int >= 2, got 1"),
    (["distill", "--online", "supermix", "--k", "1"], "--k: expected an int >= 2, got 1"),
    (["distill", "--online", "mixup", "--alpha", "-1"],
     "--alpha: expected a finite number > 0, got -1.0"),
    (["distill", "--online", "supermix", "--max-iters", "-1"],
     "--max-iters: expected an int >= 0, got -1"),
])
def test_the_commands_refuse_a_bad_solver_value_in_one_line(tmp_path, capsys, argv, message):
    from supermix.commands import cli

    status = cli.main([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_generate_takes_a_config(tmp_path):
    """generate(config=...) writes the set the same keywords write (same shards, same record);
    a setting given twice, a grid that is not square or one generate does not record is named."""
    from supermix.checkpoint import sha256_file
    from supermix.errors import UsageError
    from supermix.generation import generate
    from testing import make_teacher

    teacher = make_teacher(tmp_path / "teacher.pt")
    common = dict(teacher=teacher, shard_size=16, batch_size=16, device="cpu", progress=False,
                  keep_failed=True, limit=64, log=lambda msg: None)
    settings = dict(k=3, alpha=2.0, lambda_s=10.0, mask_size=4, max_iters=3, min_iters=1,
                    method="newton_sp", sigma=0.5)
    by_keywords = generate(tmp_path / "keywords", 16, **settings, **common)
    by_config = generate(tmp_path / "config", 16, config=SolverConfig(**settings), **common)
    assert by_config["config"] == by_keywords["config"]
    assert [sha256_file(p) for p in sorted((tmp_path / "config").glob("shard-*"))] == \
        [sha256_file(p) for p in sorted((tmp_path / "keywords").glob("shard-*"))]
    for config, extra, message in [
        (SolverConfig(k=3), dict(k=3), "generate: ['k'] given both in config and as keywords"),
        (SolverConfig(mask_size=(4, 6)), {}, "generate: config.mask_size must be square, got 4x6"),
        (SolverConfig(lr=0.5), {}, "generate: config sets ['lr'], which generate does not take"),
    ]:
        with pytest.raises(UsageError) as info:
            generate(tmp_path / "refused", 16, config=config, **extra, **common)
        assert message in str(info.value)


@pytest.mark.parametrize("text,options,line", [
    ("mask_size: expected an integer >= 1, got 0", {"--mask-size"},
     "--mask-size: expected an integer >= 1, got 0"),
    ("mixer: supermix: k must be an int >= 2", {"--mixer"}, "--mixer: supermix: k must be an int >= 2"),
    ("teacher: no file at /x", {"--k"}, "teacher: no file at /x"),         # not this command's
    ("generated set: no manifest.json in /x", {"--generated"}, "generated set: no manifest.json in /x"),
    ("checkpoint: /x: wrong structure", set(), "checkpoint: /x: wrong structure"),
])
def test_the_command_line_names_a_library_setting_by_its_flag(text, options, line):
    from supermix.commands.cli import usage_message
    from supermix.errors import UsageError

    assert usage_message(UsageError(text), frozenset(options)) == line
