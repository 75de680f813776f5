"""The solver against oracles written here, on a tiny deterministic teacher (fast enough to run
under mutation testing, scripts/mutation.sh).

Nothing here calls the solver's own loss, step or success code to check it: the objective
(eq. 4 masks, KL, eq. 5 sparsity, TV), the steps (sgd, eq. 6, eq. 7 with the Gaussian of
DESIGN.md, margin_gd) and the success rule are written out again in plain torch, and whole
trajectories of every method are replayed by a loop that freezes each sample when its top-u
classes are its u distinct source labels.
"""
from __future__ import annotations

import inspect
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import supermix
from supermix import solver
from supermix.solver import cyclic_sources, is_success, sample_dirichlet, total_variation
from testing import assert_close

N, CLASSES, SIZE, GRID = 8, 6, (8, 8), (4, 4)


class TinyTeacher(nn.Module):
    """A fixed two-layer tanh network on 1x8x8 float64 images, 6 classes; each sample's logits
    depend on that sample alone, so a batch's gradient is the per-sample gradients."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(SIZE[0] * SIZE[1], 16, dtype=torch.float64)
        self.fc = nn.Linear(16, CLASSES, dtype=torch.float64)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(16, SIZE[0] * SIZE[1], generator=g, dtype=torch.float64) * 0.6)
            self.fc.weight.copy_(torch.randn(CLASSES, 16, generator=g, dtype=torch.float64))
            self.hidden.bias.zero_()
            self.fc.bias.copy_(torch.randn(CLASSES, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x):
        return self.fc(torch.tanh(self.hidden(x.flatten(1))))


def tiny_images(seed: int = 1, n: int = N) -> torch.Tensor:
    return torch.randn(n, 1, *SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------- oracles ----
def oracle_masks(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4: bilinear upsampling, sigmoid, normalisation over the k masks."""
    s = torch.sigmoid(F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=False))
    return s / s.sum(dim=1, keepdim=True)


def oracle_tv(m: torch.Tensor) -> torch.Tensor:
    """(1/kHW) sum over masks and neighbouring pixel pairs of |difference|^3, per sample."""
    k, H, W = m.shape[1:]
    down = (m[:, :, 1:, :] - m[:, :, :-1, :]).abs() ** 3
    right = (m[:, :, :, 1:] - m[:, :, :, :-1]).abs() ** 3
    return (down.sum(dim=(1, 2, 3)) + right.sum(dim=(1, 2, 3))) / (k * H * W)


def oracle_objective(teacher, stacked, logits, targets, present, method, lambda_s=25.0, lambda_tv=250.0):
    """Per-sample loss of ``method`` and the teacher's log-probabilities on the mixed images."""
    m = oracle_masks(logits)
    mixed = (m.unsqueeze(2) * stacked).sum(dim=1)
    log_p = torch.log_softmax(teacher(mixed).double(), dim=1)
    kl = (targets * (targets.clamp_min(1e-300).log() - log_p)).sum(dim=1)
    sparsity = (m * (m - 1)).abs().mean(dim=(1, 2, 3))
    loss = kl + lambda_s * sparsity
    if method in ("sgd", "newton"):
        loss = loss + lambda_tv * oracle_tv(m)
    if method == "margin_gd":
        hinge = []
        for b in range(len(log_p)):
            other = log_p[b][~present[b]].max()
            hinge.append(sum(torch.relu(other - log_p[b][c] + solver.MARGIN_GD_MARGIN) for c in present[b].nonzero().flatten()))
        loss = loss + solver.MARGIN_GD_HINGE_WEIGHT * torch.stack(hinge)
    return loss, log_p, mixed


def oracle_smooth(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian with taps -r..r, r = floor(2.5 sigma), zero padding (DESIGN.md)."""
    if sigma == 0:
        return g
    r = math.floor(2.5 * sigma)
    taps = torch.tensor([math.exp(-t * t / (2 * sigma * sigma)) for t in range(-r, r + 1)], dtype=g.dtype)
    taps = taps / taps.sum()
    kernel = torch.outer(taps, taps).view(1, 1, 2 * r + 1, 2 * r + 1)
    B, k, h, w = g.shape
    return F.conv2d(g.reshape(B * k, 1, h, w), kernel, padding=r).view(B, k, h, w)


def oracle_success(log_p: torch.Tensor, labels_of_sources: torch.Tensor) -> torch.Tensor:
    """The top-u classes are exactly the u distinct source labels."""
    flags = []
    for lp, labels in zip(log_p, labels_of_sources):
        wanted = set(labels.tolist())
        flags.append(set(lp.argsort(descending=True)[: len(wanted)].tolist()) == wanted)
    return torch.tensor(flags)


def oracle_solve(teacher, images, sources, weights, method, max_iters, *, sigma=1.0, lr=0.1, min_iters=0,
                 lambda_s=25.0, lambda_tv=250.0):
    """Algorithm 1 / the baselines as a plain loop over iterations; every sample is stepped
    until it succeeds (after ``min_iters`` steps) and is frozen from then on."""
    with torch.no_grad():
        labels = teacher(images).argmax(dim=1)
    targets = torch.zeros(len(sources), CLASSES, dtype=torch.float64)
    for b, (row, r) in enumerate(zip(sources, weights)):
        for i, w in zip(row.tolist(), r.tolist()):
            targets[b, labels[i]] += w
    present = targets > 0
    stacked = images[sources]
    logits = torch.zeros(len(sources), sources.shape[1], *GRID, dtype=torch.float64)
    running = torch.ones(len(sources), dtype=torch.bool)
    iters = torch.zeros(len(sources), dtype=torch.long)
    rate = lr
    for t in range(max_iters + 1):
        x = logits.clone().requires_grad_(True)
        loss, log_p, _ = oracle_objective(teacher, stacked, x, targets, present, method, lambda_s, lambda_tv)
        ok = oracle_success(log_p.detach(), labels[sources])
        running &= ~(ok & (t >= min_iters))
        if t == max_iters or not running.any():
            break
        (g,) = torch.autograd.grad(loss.sum(), [x])
        if method in ("sgd", "margin_gd"):
            if method == "margin_gd" and t == 0:
                rate = solver.MARGIN_GD_FIRST_STEP / g[running].flatten(1).abs().amax(dim=1).median()
            step = rate * g
        else:
            sg = oracle_smooth(g, sigma if method == "newton_sp" else 0.0)
            size = (loss.detach() / ((sg * g).sum(dim=(1, 2, 3)) + 1e-10)).clamp(1e-4, 2000)
            step = size.view(-1, 1, 1, 1) * sg
        logits = torch.where(running.view(-1, 1, 1, 1), logits - step, logits)
        iters += running
    return logits, iters, labels, targets


def solve_tiny(method, max_iters, seed=3, **kwargs):
    teacher, images = TinyTeacher(), tiny_images()
    sources = cyclic_sources(N, 2, torch.Generator().manual_seed(seed))
    result = supermix.solve(teacher, images, sources=sources, method=method, max_iters=max_iters,
                            mask_size=GRID, generator=torch.Generator().manual_seed(seed), **kwargs)
    return teacher, images, sources, result


@pytest.mark.parametrize("alpha,k", [(0.3, 2), (0.7, 2), (0.7, 3), (1.0, 2), (2.5, 2)])
def test_dirichlet_variance_below_and_above_one(alpha, k):
    """Var r_i = alpha (a0 - alpha) / (a0^2 (a0 + 1)), a0 = k alpha: the gamma sampler's boost for
    alpha < 1 and its main branch both give the right shape, not only the right mean."""
    r = sample_dirichlet(40000, k, alpha, torch.Generator().manual_seed(1)).double()
    a0 = alpha * k
    var = alpha * (a0 - alpha) / (a0 * a0 * (a0 + 1))
    assert_close(r.mean(0), torch.full((k,), 1 / k, dtype=torch.float64), atol=0.01, rtol=0, what="mean")
    assert_close(r.var(0), torch.full((k,), var, dtype=torch.float64), atol=0.04 * var, rtol=0, what="variance")


def test_is_success_against_brute_force():
    """Random probability rows and source label sets, duplicates included: success exactly when
    the u highest classes are the u distinct source labels."""
    g = torch.Generator().manual_seed(0)
    checked = {True: 0, False: 0}
    for _ in range(100):
        n = int(torch.randint(2, 7, (1,), generator=g))
        k = int(torch.randint(2, 5, (1,), generator=g))
        A = 6
        probs = torch.softmax(torch.randn(A, n, generator=g) * 2, dim=1)
        labels = torch.randint(0, n, (A, k), generator=g)
        # make some rows succeed: put the sources' labels on top
        for a in range(0, A, 2):
            probs[a, labels[a]] += 1.0 + torch.rand(k, generator=g)
        present = torch.zeros(A, n, dtype=torch.bool).scatter_(1, labels, True)
        got = is_success(probs, present, present.sum(1), k)
        for a in range(A):
            order = sorted(range(n), key=lambda c: -float(probs[a, c]))
            wanted = set(labels[a].tolist())
            expected = set(order[: len(wanted)]) == wanted
            assert bool(got[a]) == expected, (probs[a], labels[a])
            checked[expected] += 1
    assert min(checked.values()) > 150


def test_is_success_when_k_exceeds_the_classes():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    present = torch.tensor([[True, True], [True, False]])
    assert is_success(probs, present, present.sum(1), 3).tolist() == [True, False]


# ------------------------------------------------------------------- argument checking ----
class OutputTeacher(nn.Module):
    """Returns a fixed object, whatever the input."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


def _images(**changes):
    return changes.get("images", tiny_images())


BAD_ARGUMENTS = [
    (dict(teacher=5), TypeError, "solve: teacher must be an nn.Module or callable, got int"),
    (dict(images=[1.0]), ValueError, "solve: images must be a tensor [N,C,H,W], got list"),
    (dict(images=torch.zeros(8, 8, 8)), ValueError, "solve: images must be a tensor [N,C,H,W], got [8, 8, 8]"),
    (dict(images=torch.zeros(8, 1, 8, 8, dtype=torch.long)), TypeError,
     "solve: images must be floating point, got torch.int64"),
    (dict(method="adam"), ValueError,
     "solve: method must be one of ('margin_gd', 'newton_sp', 'newton', 'sgd'), got 'adam'"),
    (dict(k=1), ValueError, "solve: k must be an int >= 2, got 1"),
    (dict(k=2.0), ValueError, "solve: k must be an int >= 2, got 2.0"),
    (dict(k=9), ValueError, "solve: k=9 sources need a batch of at least k images, got N=8"),
    (dict(alpha=0.0), ValueError, "solve: alpha must be a finite number > 0, got 0.0"),
    (dict(alpha=float("inf")), ValueError, "solve: alpha must be a finite number > 0, got inf"),
    (dict(alpha="3"), ValueError, "solve: alpha must be a finite number > 0, got '3'"),
    (dict(lambda_s=-1.0), ValueError, "solve: lambda_s must be a finite number >= 0, got -1.0"),
    (dict(lambda_s=float("nan")), ValueError, "solve: lambda_s must be a finite number >= 0, got nan"),
    (dict(lambda_tv=-0.5), ValueError, "solve: lambda_tv must be a finite number >= 0, got -0.5"),
    (dict(sigma=-1), ValueError, "solve: sigma must be a finite number >= 0, got -1"),
    (dict(lr=0.0), ValueError, "solve: lr must be a finite number > 0, got 0.0"),
    (dict(max_iters=-1), ValueError, "solve: max_iters must be an int >= 0, got -1"),
    (dict(max_iters=2.0), ValueError, "solve: max_iters must be an int >= 0, got 2.0"),
    (dict(max_iters=2, min_iters=3), ValueError, "solve: min_iters must be an int in [0, max_iters=2], got 3"),
    (dict(min_iters=-1), ValueError, "solve: min_iters must be an int in [0, max_iters=50], got -1"),
    (dict(min_iters=1.0), ValueError, "solve: min_iters must be an int in [0, max_iters=50], got 1.0"),
    (dict(mask_size=9), ValueError, "solve: mask_size must be between 1x1 and the image size 8x8, got 9x9"),
    (dict(mask_size=(0, 4)), ValueError, "solve: mask_size must be between 1x1 and the image size 8x8, got 0x4"),
    (dict(mask_size=(4, 0)), ValueError, "solve: mask_size must be between 1x1 and the image size 8x8, got 4x0"),
    (dict(mask_size=(4, 9)), ValueError, "solve: mask_size must be between 1x1 and the image size 8x8, got 4x9"),
    (dict(mask_size=(9, 4)), ValueError, "solve: mask_size must be between 1x1 and the image size 8x8, got 9x4"),
    (dict(images=tiny_images().index_fill(0, torch.tensor([5]), float("inf"))), ValueError,
     "solve: images must be finite, got NaN or infinite values"),
    (dict(teacher=OutputTeacher(lambda x: torch.zeros(x.shape[0], 1))), ValueError,
     "solve: teacher must map [N,C,H,W] to logits [N, classes>=2]; for N=8 it returned [8, 1]"),
    (dict(teacher=OutputTeacher(lambda x: torch.zeros(x.shape[0] - 1, 6))), ValueError,
     "solve: teacher must map [N,C,H,W] to logits [N, classes>=2]; for N=8 it returned [7, 6]"),
    (dict(teacher=OutputTeacher(lambda x: torch.zeros(x.shape[0]))), ValueError,
     "solve: teacher must map [N,C,H,W] to logits [N, classes>=2]; for N=8 it returned [8]"),
    pytest.param(dict(teacher=OutputTeacher(lambda x: (torch.zeros(x.shape[0], 6),))), ValueError,
                 "solve: teacher must map [N,C,H,W] to logits [N, classes>=2]; for N=8 it returned tuple"),
    (dict(sources=torch.zeros(8, 3, dtype=torch.long)), ValueError,
     "solve: sources must have shape [N=8, k=2], got [8, 3]"),
    (dict(teacher=OutputTeacher(lambda x: torch.zeros(x.shape[0], 6).index_fill(0, torch.tensor([3, 5]), float("nan")))),
     FloatingPointError,
     "solve: the teacher returned non-finite logits (NaN or inf) on 2 of 8 source images (first at row 3); "
     "check the teacher's weights and the input normalisation"),
]


@pytest.mark.parametrize("changes,error,message", BAD_ARGUMENTS,
                         ids=[f"{i:02d}" for i in range(len(BAD_ARGUMENTS))])
def test_bad_arguments_give_their_exact_message(changes, error, message):
    changes = dict(changes)
    teacher = changes.pop("teacher", TinyTeacher())
    images = changes.pop("images", tiny_images())
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        supermix.solve(teacher, images, mask_size=changes.pop("mask_size", GRID), **changes)


@pytest.mark.parametrize("changes", [dict(k=N), dict(mask_size=(1, 1)), dict(mask_size=SIZE), dict(mask_size=(1, 8)),
                                     dict(lambda_s=0.0, lambda_tv=0.0, sigma=0.0), dict(max_iters=0),
                                     dict(max_iters=2, min_iters=2), dict(alpha=1e-3)])
def test_boundary_arguments_are_accepted(changes):
    changes = dict(changes)
    mask_size = changes.pop("mask_size", GRID)
    result = supermix.solve(TinyTeacher(), tiny_images(), method="sgd", mask_size=mask_size,
                            max_iters=changes.pop("max_iters", 1), **changes)
    assert result.mask_logits.shape[-2:] == ((mask_size, mask_size) if isinstance(mask_size, int) else mask_size)
    assert result.sources.shape == (N, changes.get("k", 2))


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NaNGradientTeacher(TinyTeacher):
    def forward(self, x):
        return super().forward(_NaNGradient.apply(x))


@pytest.mark.parametrize("method", ["sgd", "margin_gd", "newton"])
def test_a_nan_gradient_is_named(method):
    with pytest.raises(FloatingPointError, match="^" + re.escape(
            f"solve: the {method} step at iteration 0 produced non-finite mask logits; the teacher's gradient is NaN "
            "or inf") + "$"):
        supermix.solve(NaNGradientTeacher(), tiny_images(), method=method, mask_size=GRID,
                       generator=torch.Generator().manual_seed(3))


class NaNOnCall(TinyTeacher):
    """NaN logits on rows 1 and 2 from the ``call``-th call on."""

    def __init__(self, call):
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out if self.calls < self.call else out.index_fill(0, torch.tensor([1, 2]), float("nan"))


def test_non_finite_logits_on_mixed_images_are_named():
    message = ("solve: the teacher returned non-finite logits (NaN or inf) on 2 of 8 mixed images at iteration 1 "
               "(first at row 1); check the teacher's weights and the input normalisation")
    with pytest.raises(FloatingPointError, match="^" + re.escape(message) + "$"):
        supermix.solve(NaNOnCall(3), tiny_images(), method="sgd", mask_size=GRID, min_iters=2, max_iters=4)


@pytest.mark.parametrize("method", ["sgd", "newton", "newton_sp", "margin_gd"])
def test_every_tensor_is_made_on_the_images_device(method):
    """Tensors created without ``device=`` land on the default device: with the default device
    set to "meta", CPU images must still give the same CPU result (on a GPU machine, a tensor
    left on the CPU would fail the same way)."""
    teacher, images = TinyTeacher(), tiny_images()
    kwargs = dict(method=method, mask_size=GRID, max_iters=2)
    expected = supermix.solve(teacher, images, generator=torch.Generator().manual_seed(3), **kwargs)
    with torch.device("meta"):
        result = supermix.solve(teacher, images, generator=torch.Generator().manual_seed(3), **kwargs)
        unseeded = supermix.solve(teacher, images, **kwargs)
    for name in ("mixed", "mask_logits", "sources", "weights", "targets", "probs", "iters", "success", "labels"):
        assert getattr(result, name).device.type == "cpu" and getattr(unseeded, name).device.type == "cpu", name
        assert torch.equal(getattr(result, name), getattr(expected, name)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_dtypes(dtype):
    result = supermix.solve(TinyTeacher().to(dtype), tiny_images().to(dtype), method="sgd", mask_size=GRID,
                            max_iters=2, generator=torch.Generator().manual_seed(3))
    assert result.mixed.dtype == dtype
    for name in ("mask_logits", "weights", "targets", "probs"):
        assert getattr(result, name).dtype == torch.float32, name
    for name in ("sources", "iters", "labels"):
        assert getattr(result, name).dtype == torch.int64, name
    assert result.success.dtype == torch.bool


# --------------------------------------------------------------------------------- tests ----
def test_tiny_case_is_a_real_test():
    """The tiny teacher gives the oracles something to check: mixed label pairs, a few samples
    that succeed at once and most that do not."""
    teacher, images, sources, result = solve_tiny("sgd", 0)
    pairs = result.labels[sources]
    assert (pairs[:, 0] != pairs[:, 1]).sum() >= 6
    assert 1 <= int(result.success.sum()) <= N - 4, result.success


def test_total_variation_against_a_loop():
    logits = torch.randn(2, 3, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    H, W = 5, 4
    m = oracle_masks_at(logits, (H, W))
    expected = []
    for b in range(2):
        total = 0.0
        for i, y, x in itertools.product(range(3), range(H), range(W)):
            if y + 1 < H:
                total += abs(float(m[b, i, y + 1, x] - m[b, i, y, x])) ** 3
            if x + 1 < W:
                total += abs(float(m[b, i, y, x + 1] - m[b, i, y, x])) ** 3
        expected.append(total / (3 * H * W))
    got = total_variation(logits, (H, W))
    assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=1e-9, what="TV")
    assert got.min() > 0


def oracle_masks_at(logits, size):
    s = torch.sigmoid(F.interpolate(logits, size=size, mode="bilinear", align_corners=False))
    return s / s.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("method", ["sgd", "newton", "newton_sp", "margin_gd"])
def test_first_step_by_hand(method):
    """One step from the uniform average against the oracle: sgd -lr*g on KL + 250 TV + 25 L_s;
    newton clamp(L/<g,g>)*g on the same loss; newton_sp clamp(L'/<Sg,g>)*Sg with S the
    Gaussian of sigma=1 on L' = KL + 25 L_s; margin_gd on KL + 25 L_s + hinge. The Newton
    step sizes carry the loss values, so this pins KL, sparsity and TV too."""
    teacher, images, sources, result = solve_tiny(method, 1)
    logits, iters, labels, targets = oracle_solve(teacher, images, sources, result.weights.double(), method, 1)
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.iters, iters)
    assert (iters == 1).sum() >= 4
    assert_close(result.mask_logits.double(), logits, atol=1e-5, rtol=1e-4, what=f"{method} first step")


def test_newton_steps_are_not_clamped_here():
    """The Newton checks above see the loss through loss/<Sg,g> only where the clamp is not
    active: make sure it is not, for the tiny case."""
    teacher, images, sources, result = solve_tiny("newton_sp", 0)
    with torch.no_grad():
        labels = teacher(images).argmax(1)
    targets = torch.zeros(N, CLASSES, dtype=torch.float64).scatter_add_(1, labels[sources], result.weights.double())
    for method, sigma in (("newton", 0.0), ("newton_sp", 1.0)):
        x = torch.zeros(N, 2, *GRID, dtype=torch.float64, requires_grad=True)
        loss, _, _ = oracle_objective(teacher, images[sources], x, targets, targets > 0, method)
        (g,) = torch.autograd.grad(loss.sum(), [x])
        size = loss.detach() / (oracle_smooth(g, sigma) * g).sum(dim=(1, 2, 3))
        assert ((size > 1e-3) & (size < 1500)).all(), (method, size)


@pytest.mark.parametrize("method", ["sgd", "newton", "newton_sp", "margin_gd"])
def test_trajectory_against_the_oracle_loop(method):
    """Several iterations: every sample's logits, iterations, success flag, mixed image and
    teacher probabilities agree with the oracle loop."""
    kwargs = {"lr": 2.0} if method == "sgd" else {}
    teacher, images, sources, result = solve_tiny(method, 4, **kwargs)
    logits, iters, labels, targets = oracle_solve(teacher, images, sources, result.weights.double(), method, 4,
                                                  **kwargs)
    assert torch.equal(result.iters, iters), (result.iters, iters)
    assert_close(result.mask_logits.double(), logits, atol=1e-4, rtol=1e-3, what=f"{method} logits")
    assert_close(result.targets.double(), targets, atol=1e-6, rtol=0, what="y_hat")
    _, log_p, mixed = oracle_objective(teacher, images[sources], result.mask_logits.double(), targets, targets > 0,
                                       "newton_sp")
    assert_close(result.mixed, mixed.detach(), atol=1e-6, rtol=1e-5, what="mixed")
    assert_close(result.probs.double(), log_p.detach().exp(), atol=1e-5, rtol=1e-4, what="probs")
    assert torch.equal(result.success, oracle_success(log_p.detach(), labels[sources]))
    assert result.mixed.dtype == torch.float64 and result.mask_logits.dtype == torch.float32
    assert result.success.any() and (iters > 1).any()


@pytest.mark.parametrize("method", ["sgd", "newton_sp"])
def test_min_iters_steps_successes_too(method):
    teacher, images, sources, result = solve_tiny(method, 3, min_iters=2)
    logits, iters, _, _ = oracle_solve(teacher, images, sources, result.weights.double(), method, 3, min_iters=2)
    assert (result.iters >= 2).all()
    assert torch.equal(result.iters, iters)
    assert_close(result.mask_logits.double(), logits, atol=1e-4, rtol=1e-3, what="min_iters")


def test_lambdas_and_sigma_reach_the_loss():
    """Non-default lambda_s, lambda_tv, sigma and lr change the steps exactly as the oracle says."""
    for method, kwargs in (("sgd", dict(lr=0.5, lambda_tv=40.0, lambda_s=3.0)),
                           ("newton", dict(lambda_tv=10.0, lambda_s=0.0)),
                           ("newton_sp", dict(sigma=0.7, lambda_s=5.0))):
        teacher, images, sources, result = solve_tiny(method, 2, **kwargs)
        logits, iters, _, _ = oracle_solve(teacher, images, sources, result.weights.double(), method, 2, **kwargs)
        assert torch.equal(result.iters, iters), method
        assert_close(result.mask_logits.double(), logits, atol=1e-4, rtol=1e-3, what=method)


def test_sgd_descends():
    """A small sgd step lowers every stepped sample's loss (KL + 250 TV + 25 L_s)."""
    teacher, images, sources, result = solve_tiny("sgd", 1, lr=1e-3)
    targets = result.targets.double()
    stepped = result.iters == 1
    assert stepped.sum() >= 4
    before, _, _ = oracle_objective(teacher, images[sources], torch.zeros(N, 2, *GRID, dtype=torch.float64),
                                    targets, targets > 0, "sgd")
    after, _, _ = oracle_objective(teacher, images[sources], result.mask_logits.double(), targets, targets > 0, "sgd")
    assert (after[stepped] < before[stepped]).all(), (before, after)
    assert torch.equal(after[~stepped], before[~stepped])


def test_newton_sp_smooths_and_newton_does_not():
    """newton_sp's step is the smoothed direction and depends on sigma; newton's ignores sigma
    and is the raw gradient direction."""
    steps = {}
    for method, sigma in itertools.product(("newton", "newton_sp"), (0.0, 1.0, 2.0)):
        *_, result = solve_tiny(method, 1, sigma=sigma)
        steps[method, sigma] = result.mask_logits
    assert torch.equal(steps["newton", 0.0], steps["newton", 1.0])
    assert torch.equal(steps["newton", 0.0], steps["newton", 2.0])
    assert not torch.allclose(steps["newton_sp", 1.0], steps["newton_sp", 0.0], atol=1e-3)
    assert not torch.allclose(steps["newton_sp", 2.0], steps["newton_sp", 1.0], atol=1e-3)

    def roughness(x):  # mean squared difference of neighbouring grid cells
        return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()

    assert roughness(steps["newton_sp", 1.0]) < roughness(steps["newton_sp", 0.0])
    assert roughness(steps["newton_sp", 2.0]) < roughness(steps["newton_sp", 1.0])


def test_weights_and_targets_come_from_the_generator():
    teacher, images, sources, result = solve_tiny("sgd", 0, alpha=0.7)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(result.weights, sample_dirichlet(N, 2, 0.7, g))
    assert torch.equal(result.sources, sources)
    free = supermix.solve(teacher, images, max_iters=0, mask_size=GRID, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    assert torch.equal(free.sources, cyclic_sources(N, 2, g))
    assert torch.equal(free.weights, sample_dirichlet(N, 2, 3.0, g))
    assert_close(free.targets.sum(1), torch.ones(N), atol=1e-6, rtol=0, what="y_hat sums to 1")


def test_defaults_are_the_papers():
    """solve's defaults: k=2, alpha=3, lambda_s=25, sigma=1, 8x8 grid, 50 iterations (sec. 4),
    lr=0.1 and lambda_tv=250 for the baselines (sec. 4.4), margin_gd, no forced steps."""
    config = supermix.SolverConfig()
    want = dict(k=2, alpha=3.0, lambda_s=25.0, sigma=1.0, mask_size=(8, 8), max_iters=50, method="margin_gd",
                lr=0.1, lambda_tv=250.0, backend=None, autocast_dtype=None, channels_last=False, min_iters=0)
    assert {name: getattr(config, name) for name in want} == want
    params = inspect.signature(supermix.solve).parameters
    plug_ins = dict(config=None, generator=None, sources=None, weights=None, objective=None, success=None,
                    source_logits=None)
    assert {name: params[name].default for name in plug_ins} == plug_ins
    assert solver.DEFAULT_METHOD == "margin_gd" and solver.METHODS == ("margin_gd", "newton_sp", "newton", "sgd")
    assert (solver.MARGIN_GD_FIRST_STEP, solver.MARGIN_GD_HINGE_WEIGHT, solver.MARGIN_GD_MARGIN) == (4.0, 1.0, 0.5)


class ModeTeacher(TinyTeacher):
    """Records the mode of itself and of a submodule at every call."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Dropout(0.5)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, self.inner.training))
        return super().forward(self.inner(x))


@pytest.mark.parametrize("method", ["margin_gd", "sgd"])
def test_teacher_runs_in_eval_mode_and_gets_its_modes_back(method):
    teacher = ModeTeacher().train()
    supermix.solve(teacher, tiny_images(), method=method, max_iters=2, mask_size=GRID,
                   generator=torch.Generator().manual_seed(0))
    assert teacher.seen and all(mode == (False, False) for mode in teacher.seen), teacher.seen
    assert teacher.training and teacher.inner.training

    teacher = ModeTeacher().train()
    teacher.inner.eval()  # a submodule left in eval stays in eval
    supermix.solve(teacher, tiny_images(), method=method, max_iters=1, mask_size=GRID)
    assert teacher.training and not teacher.inner.training

    teacher = ModeTeacher().eval()
    supermix.solve(teacher, tiny_images(), method=method, max_iters=1, mask_size=GRID)
    assert not teacher.training and not teacher.inner.training


def test_modes_come_back_after_an_error():
    teacher = ModeTeacher().train()
    with pytest.raises(ValueError, match="sources must have shape"):
        supermix.solve(teacher, tiny_images(), sources=torch.zeros(N, 3, dtype=torch.long), mask_size=GRID)
    assert teacher.training and teacher.inner.training


def test_a_plain_callable_teacher():
    net = TinyTeacher()
    result = supermix.solve(lambda x: net(x), tiny_images(), method="sgd", max_iters=2, mask_size=GRID,
                            generator=torch.Generator().manual_seed(3))
    reference = supermix.solve(net, tiny_images(), method="sgd", max_iters=2, mask_size=GRID,
                               generator=torch.Generator().manual_seed(3))
    assert torch.equal(result.mask_logits, reference.mask_logits)


def test_stats_count_the_teacher_work():
    teacher, images, sources, result = solve_tiny("sgd", 3, lr=2.0)
    iters = result.iters
    per_forward = [N] + [int((iters >= t).sum()) for t in range(int(iters.max()) + 1)]
    assert result.stats.forward_calls == len(per_forward)
    assert result.stats.forward_samples == sum(per_forward)
    assert result.stats.backward_calls == int(iters.max())
    assert result.stats.backward_samples == sum(per_forward[1:-1])
    assert result.stats.seconds > 0


def test_result_helpers():
    *_, result = solve_tiny("sgd", 2, lr=2.0)
    summary = result.summary()
    ok = result.success
    assert summary == {
        "samples": N, "success_rate": float(ok.float().mean()), "mean_iters": float(result.iters.float().mean()),
        "mean_iters_successful": float(result.iters[ok].float().mean()), "failed": int((~ok).sum()),
    }
    assert len(result) == N
    assert_close(result.masks().double(), oracle_masks(result.mask_logits.double()), atol=1e-6, rtol=0, what="masks")
    picked = result.select(ok)
    assert len(picked) == int(ok.sum()) and torch.equal(picked.iters, result.iters[ok])
    assert torch.equal(picked.labels, result.labels)  # labels index the input images, not the samples
    none = result.select(torch.zeros(N, dtype=torch.bool)).summary()
    assert none["samples"] == 0 and none["failed"] == 0
    assert all(math.isnan(none[key]) for key in ("success_rate", "mean_iters", "mean_iters_successful"))
    full = torch.rand(N, 2, *SIZE)
    from dataclasses import replace
    assert replace(result, full_masks=full).masks() is full
    with pytest.raises(ValueError, match="neither mask_logits nor full_masks"):
        replace(result, mask_logits=None).masks()


def test_masks_without_logits_or_boxes_is_an_exact_error():
    *_, result = solve_tiny("sgd", 0)
    from dataclasses import replace
    with pytest.raises(ValueError, match="^this MixResult has neither mask_logits nor full_masks$"):
        replace(result, mask_logits=None).masks()


class RecordingTeacher(TinyTeacher):
    """Records the memory format and autocast state of every input, on 3-channel images."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[bool, bool, torch.dtype | None]] = []

    def forward(self, x):
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        autocast = torch.is_autocast_enabled("cpu")
        self.seen.append((channels_last, autocast, torch.get_autocast_dtype("cpu") if autocast else None))
        out = super().forward(F.adaptive_avg_pool2d(x.mean(dim=1, keepdim=True).to(torch.float64), SIZE))
        return out.to(torch.get_autocast_dtype("cpu")) if autocast else out


@pytest.mark.parametrize("channels_last,autocast_dtype", [(False, None), (True, None), (False, torch.bfloat16),
                                                        (True, torch.float16)])
def test_channels_last_and_autocast_reach_the_teacher(channels_last, autocast_dtype):
    teacher = RecordingTeacher()
    images = torch.randn(N, 3, *SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = supermix.solve(teacher, images, method="sgd", mask_size=GRID, max_iters=2, channels_last=channels_last,
                            autocast_dtype=autocast_dtype, generator=torch.Generator().manual_seed(3))
    assert len(teacher.seen) >= 3
    assert set(teacher.seen) == {(channels_last, autocast_dtype is not None, autocast_dtype)}
    assert result.probs.dtype == torch.float32


@pytest.mark.parametrize("method", ["newton_sp", "sgd"])
def test_the_backend_reaches_both_kernels(method, monkeypatch):
    """``backend=`` is passed to every mix and Newton step (recorded at the kernels' entry
    points as the solver module calls them)."""
    seen = []

    def recording(name, op):
        def call(*args, **kwargs):
            seen.append((name, kwargs.get("backend")))
            return op(*args, **kwargs)
        return call

    monkeypatch.setattr(solver, "mix", recording("mix", solver.mix))
    monkeypatch.setattr(solver, "newton_step", recording("newton_step", solver.newton_step))
    supermix.solve(TinyTeacher(), tiny_images(), method=method, mask_size=GRID, max_iters=2, backend="reference",
                   generator=torch.Generator().manual_seed(3))
    names = {name for name, _ in seen}
    assert names == ({"mix", "newton_step"} if method == "newton_sp" else {"mix"})
    assert len(seen) >= 3 and all(backend == "reference" for _, backend in seen), seen


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("method", ["newton_sp", "margin_gd"])
def test_no_warnings(method):
    """No deprecated calls (an implicit softmax dimension, for one) on the solver's path."""
    supermix.solve(TinyTeacher(), tiny_images(), method=method, mask_size=GRID, max_iters=2,
                   generator=torch.Generator().manual_seed(3))


def test_two_classes_are_enough():
    teacher = OutputTeacher(lambda x: torch.stack([x.flatten(1).mean(1), -x.flatten(1).mean(1)], dim=1))
    result = supermix.solve(teacher, tiny_images(), method="sgd", mask_size=GRID, max_iters=1)
    assert result.probs.shape == (N, 2) and result.targets.shape == (N, 2)


def test_sampling_follows_the_generators_device():
    """With a generator and no device, sources and weights are made on the generator's device,
    not the default one."""
    with torch.device("meta"):
        sources = cyclic_sources(5, 2, torch.Generator().manual_seed(0))
        weights = sample_dirichlet(5, 2, 0.5, torch.Generator().manual_seed(0))
    assert sources.device.type == "cpu" and weights.device.type == "cpu"
    assert torch.equal(sources, cyclic_sources(5, 2, torch.Generator().manual_seed(0)))


def test_an_unknown_backend_fails_before_the_teacher_runs():
    teacher = ModeTeacher()
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cpp', 'triton', 'reference'\), got 'bogus'"):
        supermix.solve(teacher, tiny_images(), mask_size=GRID, backend="bogus")
    assert teacher.seen == []


def test_default_settings_in_use():
    """A call with no settings uses the paper's: an 8x8 grid, k=2, r ~ Dirichlet(3), plain
    (not channels_last) inputs without autocast, and the results of the values spelled out."""
    teacher = RecordingTeacher()
    images = torch.randn(N, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = supermix.solve(teacher, images, method="sgd", max_iters=1, generator=torch.Generator().manual_seed(5))
    assert result.mask_logits.shape == (N, 2, 8, 8)
    assert set(teacher.seen) == {(False, False, None)}
    g = torch.Generator().manual_seed(5)
    assert torch.equal(result.sources, cyclic_sources(N, 2, g))
    assert torch.equal(result.weights, sample_dirichlet(N, 2, 3.0, g))
    spelled = dict(k=2, alpha=3.0, lambda_s=25.0, sigma=1.0, mask_size=GRID, lr=0.1, lambda_tv=250.0, min_iters=0)
    for method in ("newton_sp", "sgd", "newton", "margin_gd"):
        teacher, images = TinyTeacher(), tiny_images()
        default = supermix.solve(teacher, images, method=method, mask_size=GRID, max_iters=3,
                                 generator=torch.Generator().manual_seed(3))
        explicit = supermix.solve(teacher, images, method=method, max_iters=3, generator=torch.Generator().manual_seed(3),
                                  **spelled)
        assert torch.equal(default.mask_logits, explicit.mask_logits) and torch.equal(default.iters, explicit.iters)
    fifty = supermix.solve(TinyTeacher(), tiny_images(), method="sgd", lr=1e-6, mask_size=GRID,
                           generator=torch.Generator().manual_seed(3))
    assert int(fifty.iters.max()) == 50 and not fifty.success.all()


def test_given_sources_are_used_as_int64():
    teacher, images = TinyTeacher(), tiny_images()
    sources = cyclic_sources(N, 2, torch.Generator().manual_seed(3))
    as_int32 = supermix.solve(teacher, images, sources=sources.int(), method="sgd", mask_size=GRID, max_iters=2,
                              generator=torch.Generator().manual_seed(3))
    as_int64 = supermix.solve(teacher, images, sources=sources, method="sgd", mask_size=GRID, max_iters=2,
                              generator=torch.Generator().manual_seed(3))
    assert as_int32.sources.dtype == torch.int64 and torch.equal(as_int32.sources, sources)
    assert torch.equal(as_int32.mask_logits, as_int64.mask_logits)


def test_seconds_is_the_time_taken():
    import time

    start = time.perf_counter()
    result = supermix.solve(TinyTeacher(), tiny_images(), method="sgd", mask_size=GRID, max_iters=2)
    took = time.perf_counter() - start
    assert 0 < result.stats.seconds <= took
