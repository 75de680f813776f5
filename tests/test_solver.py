"""The solver (Algorithm 1) and its baselines on the shipped teacher and real Fashion-MNIST."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import supermix
from supermix.solver import cyclic_sources, is_success, sample_dirichlet
from testing import assert_close, backends_for, shipped_teacher_and_test_images


_teacher_and_images = shipped_teacher_and_test_images


@pytest.fixture
def teacher():
    return _teacher_and_images()[0]


@pytest.fixture
def test_images():
    return _teacher_and_images()[1]


def _batch(images, start, size=128):
    return images[start:start + size]


class CallRecorder:
    """Forward hook that records the batch size of every teacher call."""

    def __init__(self, module: nn.Module):
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(lambda m, inp, out: self.sizes.append(inp[0].shape[0]))

    def close(self):
        self.handle.remove()


# ----------------------------------------------------------------------------- defaults ----
def test_defaults_succeed_on_real_images(teacher, test_images):
    x = _batch(test_images, 0)
    result = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(0))
    summary = result.summary()
    assert summary["success_rate"] >= 0.75, summary
    same_label = result.labels[result.sources[:, 0]] == result.labels[result.sources[:, 1]]
    assert result.success[same_label].all(), "a set whose sources share one label must succeed"
    masks = result.masks()
    assert masks.shape == (128, 2, 28, 28)
    assert masks.min() >= 0 and masks.max() <= 1
    assert_close(masks.sum(dim=1), torch.ones(128, 28, 28), atol=1e-6, rtol=0, what="mask sum")
    assert result.mixed.shape == x.shape and result.mask_logits.shape == (128, 2, 8, 8)
    assert result.iters.max() <= 50
    assert_close(result.weights.sum(1), torch.ones(128), atol=1e-6, rtol=0, what="r sums to 1")
    assert_close(result.targets.sum(1), torch.ones(128), atol=1e-6, rtol=0, what="y_hat sums to 1")


def test_reported_successes_are_real(teacher, test_images):
    x = _batch(test_images, 128)
    result = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = torch.softmax(teacher(result.mixed), dim=1)
    present = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, result.labels[result.sources], True)
    recheck = is_success(probs, present, present.sum(1), 2)
    assert torch.equal(recheck, result.success)
    assert_close(probs, result.probs, atol=1e-5, rtol=1e-4, what="returned probs")
    # The mixed image is the one the masks give.
    again, _ = supermix_ext_mix(x[result.sources], result.mask_logits)
    assert_close(again, result.mixed, atol=1e-5, rtol=1e-5, what="mixed vs masks")


def supermix_ext_mix(images, logits):
    import supermix_ext

    return supermix_ext.mix(images, logits, backend="reference")


def test_finished_samples_are_not_recomputed(teacher, test_images):
    x = _batch(test_images, 256, 64)
    recorder = CallRecorder(teacher)
    try:
        result = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(2), max_iters=20)
    finally:
        recorder.close()
    iters = result.iters
    last = int(iters.max())
    # One label forward; then forward t sees exactly the samples still running at t.
    expected = [64] + [int((iters >= t).sum()) for t in range(last + 1)]
    assert recorder.sizes == expected, (recorder.sizes, expected)
    assert result.stats.forward_calls == len(expected)
    assert result.stats.backward_calls == last
    assert result.stats.forward_samples == sum(expected)
    # A backward follows every loop forward but the last (which is only the final check).
    assert result.stats.backward_samples == sum(expected[1:-1])


def test_uniform_average_that_succeeds_takes_zero_iterations(teacher, test_images):
    x = _batch(test_images, 0, 64)
    result = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(3))
    zero = result.iters == 0
    assert zero.any()
    assert result.success[zero].all()
    average = x[result.sources[zero]].mean(dim=1)
    assert_close(result.mixed[zero], average, atol=1e-5, rtol=1e-5, what="0-iteration mix is the average")


def test_three_sources(teacher, test_images):
    x = _batch(test_images, 512, 64)
    result = supermix.solve(teacher, x, k=3, generator=torch.Generator().manual_seed(4))
    assert result.sources.shape == (64, 3) and result.mask_logits.shape == (64, 3, 8, 8)
    assert all(len(set(row.tolist())) == 3 for row in result.sources)
    assert result.summary()["success_rate"] > 0.3


def test_duplicate_source_labels(teacher, test_images):
    """A set whose sources share labels needs only its u < k distinct labels on top."""
    x = _batch(test_images, 0, 256)
    with torch.no_grad():
        labels = teacher(x).argmax(1)
    order = torch.argsort(labels, stable=True)
    rows = []
    for i in range(len(order) - 1):
        a, b = int(order[i]), int(order[i + 1])
        if labels[a] == labels[b] and len(rows) < 48:
            others = (labels != labels[a]).nonzero().flatten()
            rows.append([a, b, int(others[len(rows) % len(others)])])
    dup = torch.tensor(rows)
    sources = cyclic_sources(256, 3, torch.Generator().manual_seed(6))
    sources[: len(rows)] = dup
    result = supermix.solve(teacher, x, k=3, sources=sources, generator=torch.Generator().manual_seed(5))
    top2 = result.probs[: len(rows)].topk(2, dim=1).indices.sort(1).values
    want = torch.stack([labels[dup[:, 0]], labels[dup[:, 2]]], dim=1).sort(1).values
    assert torch.equal(result.success[: len(rows)], (top2 == want).all(1))
    assert result.success[: len(rows)].float().mean() > 0.5


def test_same_seed_same_result(teacher, test_images):
    x = _batch(test_images, 1024, 48)
    a = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(7), max_iters=10)
    b = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(7), max_iters=10)
    c = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(8), max_iters=10)
    for name in ("sources", "weights", "mask_logits", "iters", "success", "mixed"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.sources, c.sources)


def test_every_backend_gives_the_same_result(teacher, test_images):
    x = _batch(test_images, 2048, 32)
    results = {
        backend: supermix.solve(teacher, x, generator=torch.Generator().manual_seed(9), backend=backend,
                                max_iters=10)
        for backend in backends_for("cpu")
    }
    base = results.pop("reference")
    for backend, r in results.items():
        agree = ((r.success == base.success) & (r.iters == base.iters)).float().mean()
        assert agree >= 0.95, f"{backend}: success flags and iterations agree on {agree:.0%}"
        # Steps of up to 2000 amplify rounding over many iterations, so masks are compared where
        # the solver converged quickly.
        quick = (r.iters == base.iters) & base.success & (base.iters <= 3)
        assert quick.sum() >= 8
        scale = base.mask_logits[quick].abs().max().item()
        assert_close(r.mask_logits[quick], base.mask_logits[quick], atol=1e-3 * scale, rtol=1e-3, what=backend)


@pytest.mark.parametrize("method", ["sgd", "newton"])
def test_baselines_run_and_stop_by_the_same_rule(teacher, test_images, method):
    x = _batch(test_images, 4096, 32)
    result = supermix.solve(teacher, x, method=method, max_iters=5, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        probs = torch.softmax(teacher(result.mixed), dim=1)
    present = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, result.labels[result.sources], True)
    assert torch.equal(is_success(probs, present, present.sum(1), 2), result.success)
    assert (result.iters[~result.success] == 5).all()
    assert (result.iters[result.success] <= 5).all()


def test_autocast_and_channels_last_run(teacher, test_images):
    x = _batch(test_images, 0, 16)
    result = supermix.solve(teacher, x, autocast_dtype=torch.bfloat16, channels_last=True, max_iters=3,
                            generator=torch.Generator().manual_seed(11))
    assert result.mixed.shape == x.shape and torch.isfinite(result.mask_logits).all()


# ---------------------------------------------------------------------------- margin_gd ----
def _confirm_by_teacher(teacher, x, result) -> torch.Tensor:
    """Success flags recomputed per sample from the teacher, written here without is_success:
    the set of the top-u classes on the mixed image equals the sources' u distinct labels."""
    with torch.no_grad():
        labels = teacher(x).argmax(1)
        probs = torch.softmax(teacher(result.mixed), dim=1)
    flags = []
    for b in range(len(result)):
        wanted = {int(c) for c in labels[result.sources[b]]}
        flags.append({int(c) for c in probs[b].topk(len(wanted)).indices} == wanted)
    return torch.tensor(flags)


def test_margin_gd_is_the_default_and_its_successes_are_real(teacher, test_images):
    assert supermix.solver.DEFAULT_METHOD == "margin_gd"
    x = _batch(test_images, 640)
    result = supermix.solve(teacher, x, generator=torch.Generator().manual_seed(20))
    assert torch.equal(_confirm_by_teacher(teacher, x, result), result.success)
    assert result.success.float().mean() >= 0.95, result.summary()
    assert (result.iters[~result.success] == 50).all()


def test_margin_gd_hinge_by_hand():
    log_probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]).log()
    present = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    margin = 0.5
    expected = []
    for lp, pr in zip(log_probs.tolist(), present.tolist()):
        other = max(v for v, p in zip(lp, pr) if not p)
        expected.append(sum(max(0.0, other - v + margin) for v, p in zip(lp, pr) if p))
    got = supermix.solver.success_margin_hinge(log_probs, present, margin)
    assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0, what="hinge")
    assert got[0] == 0 and got[1] > 0 and got[2] > 0  # the first set already leads by the margin


def test_margin_gd_first_step_by_hand(teacher, test_images):
    """One step against an oracle built from the reference mix and autograd: logits move by
    -rate * grad(KL + lambda_s L_s + hinge), rate = FIRST_STEP / median of the stepping
    samples' largest gradient entry; samples that already succeed stay at zero."""
    from supermix import solver
    from supermix_ext import reference

    x = _batch(test_images, 768, 48)
    sources = cyclic_sources(48, 2, torch.Generator().manual_seed(21))
    result = supermix.solve(teacher, x, sources=sources, max_iters=1, generator=torch.Generator().manual_seed(22))
    targets = torch.zeros(48, 10).scatter_add_(1, result.labels[sources], result.weights)
    present = torch.zeros(48, 10, dtype=torch.bool).scatter_(1, result.labels[sources], True)
    logits = torch.zeros(48, 2, 8, 8, requires_grad=True)
    mixed, sparsity = reference.mix_ref(x[sources], logits)
    log_probs = torch.log_softmax(teacher(mixed), dim=1)
    hinge = torch.stack([
        sum(torch.relu(log_probs[b][~present[b]].max() - log_probs[b][c] + solver.MARGIN_GD_MARGIN)
            for c in present[b].nonzero().flatten())
        for b in range(48)
    ])
    loss = (targets * (targets.clamp_min(1e-30).log() - log_probs)).sum(1) + 25.0 * sparsity + hinge
    (grad,) = torch.autograd.grad(loss.sum(), [logits])
    stepped = result.iters == 1
    assert stepped.sum() >= 10 and (~stepped).sum() >= 3
    largest = grad[stepped].flatten(1).abs().amax(1)
    rate = solver.MARGIN_GD_FIRST_STEP / largest.median()
    expected = torch.where(stepped.view(-1, 1, 1, 1), -rate * grad, torch.zeros_like(grad))
    assert_close(result.mask_logits, expected, atol=1e-4, rtol=1e-3, what="first margin_gd step")
    moved = result.mask_logits[stepped].flatten(1).abs().amax(1)
    assert math.isclose(float(moved.median()), solver.MARGIN_GD_FIRST_STEP, rel_tol=1e-4)


def test_margin_gd_leaves_finished_samples_untouched(teacher, test_images):
    x = _batch(test_images, 896, 64)
    short = supermix.solve(teacher, x, max_iters=2, generator=torch.Generator().manual_seed(23))
    long = supermix.solve(teacher, x, max_iters=6, generator=torch.Generator().manual_seed(23))
    done = short.success
    assert done.sum() >= 10 and (long.iters > 2).any()
    for name in ("mask_logits", "mixed", "iters", "probs"):
        assert torch.equal(getattr(short, name)[done], getattr(long, name)[done]), name


# ----------------------------------------------------------------------------- sampling ----
def test_dirichlet_samples_have_the_right_moments():
    alpha, k, n = 3.0, 3, 20000
    r = sample_dirichlet(n, k, alpha, torch.Generator().manual_seed(0))
    a0 = alpha * k
    assert_close(r.mean(0), torch.full((k,), 1 / k), atol=0.01, rtol=0, what="mean")
    var = (alpha * (a0 - alpha)) / (a0 * a0 * (a0 + 1))
    assert_close(r.var(0), torch.full((k,), var), atol=0.1 * var, rtol=0, what="variance")
    small = sample_dirichlet(n, 2, 0.3, torch.Generator().manual_seed(1))
    assert (small > 0).all() and math.isclose(float(small.mean()), 0.5, abs_tol=0.02)


def test_cyclic_sources_are_distinct():
    s = cyclic_sources(7, 3, torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 3 for row in s)
    assert sorted(s[:, 0].tolist()) == list(range(7))


def test_success_rule_with_duplicate_labels():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    present = torch.tensor([[True, True, False], [True, False, False], [True, False, False]])
    assert is_success(probs, present, present.sum(1), 2).tolist() == [True, False, True]


# ----------------------------------------------------------------------------- bad input ----
class _Flat(nn.Module):
    def __init__(self, out_shape):
        super().__init__()
        self.out_shape = out_shape
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.w * torch.ones(x.shape[0], *self.out_shape)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(k=9), r"k=9 sources need a batch of at least k images, got N=8"),
        (dict(alpha=0.0), r"alpha must be a finite number > 0, got 0.0"),
        (dict(lambda_s=-1.0), r"lambda_s must be a finite number >= 0, got -1.0"),
        (dict(max_iters=-1), r"max_iters must be an int >= 0, got -1"),
        (dict(method="adam"), r"method must be one of \('margin_gd', 'newton_sp', 'newton', 'sgd'\), got 'adam'"),
        (dict(mask_size=40), r"mask_size must be between 1x1 and the image size 28x28, got 40x40"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        supermix.solve(_Flat((10,)), torch.randn(8, 1, 28, 28), **kwargs)


class _NaNAfter(nn.Module):
    """Finite logits for the first ``calls`` calls, then NaN on every row."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.seen = calls, 0
        self.lin = nn.Linear(28 * 28, 10)

    def forward(self, x):
        self.seen += 1
        out = self.lin(x.flatten(1))
        return out if self.seen <= self.calls else out * float("nan")


@pytest.mark.parametrize("method", ["margin_gd", "newton_sp", "sgd"])
def test_non_finite_teacher_is_named(method):
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or inf\) on 8 of 8 source images"):
        supermix.solve(_NaNAfter(0), x, method=method)
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or inf\) on \d+ of \d+ mixed images at iteration 1"):
        supermix.solve(_NaNAfter(2), x, method=method, max_iters=5, min_iters=2)


def test_teacher_modes_are_restored_per_submodule(teacher, test_images):
    """A training teacher with a frozen (eval) BatchNorm comes back exactly as it was."""
    import copy

    from supermix import MixUp

    net = copy.deepcopy(teacher).train()
    frozen = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][1]
    frozen.eval()
    before = [m.training for m in net.modules()]
    x = _batch(test_images, 0, 8)
    supermix.solve(net, x, max_iters=2, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in net.modules()] == before
    MixUp(teacher=net)(x, torch.zeros(8, dtype=torch.long))
    assert [m.training for m in net.modules()] == before
    net.eval()
    supermix.solve(net, x, max_iters=1)
    assert not any(m.training for m in net.modules())


def test_mixer_names_a_non_finite_teacher():
    from supermix import MixUp

    with pytest.raises(FloatingPointError, match=r"MixUp: the teacher returned non-finite logits \(NaN or inf\) on \d+ of \d+ images"):
        MixUp(teacher=_NaNAfter(0))(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))


def test_bad_teacher_output_and_images():
    with pytest.raises(ValueError, match=r"teacher must map \[N,C,H,W\] to logits \[N, classes>=2\]; for N=8 it returned \[8, 10, 2\]"):
        supermix.solve(_Flat((10, 2)), torch.randn(8, 1, 28, 28))
    bad = torch.randn(8, 1, 28, 28)
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="images must be finite"):
        supermix.solve(_Flat((10,)), bad)
