"""SuperMix mask solver: the paper's Algorithm 1 and the two baselines of its Table 4.

``solve(teacher, images)`` mixes every image of a batch with k-1 others so that the teacher
sees all k source classes in the result, in the proportions r ~ Dirichlet(alpha). Masks live on
a coarse h x w grid of logits, are bilinearly upsampled and normalised through sigmoids
(eq. 4), and are found by one of three methods that share one loop and one success rule:

- ``"margin_gd"`` (the default, this package's own): gradient descent on
  KL + lambda_s * L_s + a hinge on the success rule's margin, with a step size calibrated from
  the batch's first gradient, so it needs no per-teacher learning rate (see ``success_margin_hinge``
  and ``_margin_gd_rate``). Measured against the best rate of an SGD sweep on three teachers in
  ``benchmarks/bench_solver.py``.
- ``"newton_sp"`` (the paper's method): Newton step with smooth projection, eq. 7, on
  L'_SM = KL + lambda_s * L_s.
- ``"newton"``: the eq. 6 step (no smoothing, same step clamp) on
  L_SM = KL + lambda_tv * TV + lambda_s * L_s.
- ``"sgd"``: plain gradient descent with learning rate ``lr`` on L_SM.

Per iteration the solver runs exactly one teacher forward and one backward, over the samples
still active; the forward of iteration t+1 is also the success check of iteration t.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from supermix_ext import mix, newton_step, resolve_backend
from supermix_ext.reference import normalised_masks_ref

from .config import DEFAULT_METHOD, METHODS, SolverConfig
from .problem import (MARGIN_GD_HINGE_WEIGHT, MARGIN_GD_MARGIN, OBJECTIVES, SolveState,
                      default_objective, is_success, kl_to_target, margin_gd_objective,
                      newton_sp_objective, paper_success, success_margin_hinge,
                      total_variation, tv_objective)
from .sampling import cyclic_sources, sample_dirichlet

__all__ = ["METHODS", "DEFAULT_METHOD", "SolverConfig", "MixResult", "SolveStats", "SolveState",
           "sample_dirichlet", "cyclic_sources", "solve", "is_success", "success_margin_hinge",
           "eval_mode", "kl_to_target", "newton_sp_objective", "tv_objective",
           "margin_gd_objective", "default_objective", "paper_success", "OBJECTIVES",
           "total_variation", "MARGIN_GD_HINGE_WEIGHT", "MARGIN_GD_MARGIN"]

# margin_gd's fixed settings, chosen once on the shipped teacher and held fixed on every other
# teacher, mask size and k (benchmarks/RESULTS.md):
# the first step moves the median sample's largest mask logit by this much; the rate then stays.
MARGIN_GD_FIRST_STEP = 4.0


@dataclass
class SolveStats:
    """Work the solver did: teacher calls and the samples they processed."""

    forward_calls: int = 0
    backward_calls: int = 0
    forward_samples: int = 0
    backward_samples: int = 0
    seconds: float = 0.0


@dataclass
class MixResult:
    """What ``solve`` (or a mixer's offline form) returns; B mixed samples of k sources.

    Attributes:
        mixed: [B,C,H,W] mixed images, in the dtype of the input images.
        mask_logits: [B,k,h,w] float32 mask logits, or None for blind mixers.
        sources: [B,k] int64 indices into the input batch.
        weights: [B,k] mixing coefficients r (paper eq. 2).
        targets: [B,n] target soft labels y_hat = sum_i r_i onehot(y_i).
        probs: [B,n] teacher probabilities on ``mixed`` (None for unlabelled blind mixing).
        iters: [B] int64 solver iterations (0 when the uniform average already succeeds).
        success: [B] bool, the termination criterion held at the returned image.
        labels: [N] int64 teacher labels of the input images (argmax).
        full_masks: [B,k,H,W] exact masks of blind mixers (CutMix boxes); None otherwise.
        stats: teacher work done.
    """

    mixed: torch.Tensor
    mask_logits: torch.Tensor | None
    sources: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor | None
    iters: torch.Tensor
    success: torch.Tensor
    labels: torch.Tensor | None = None
    full_masks: torch.Tensor | None = None
    stats: SolveStats = field(default_factory=SolveStats)

    def teacher_logits(self) -> torch.Tensor:
        """[B,n] the teacher's log-probabilities on ``mixed``: its logits up to a constant per
        row, which softmax (at any temperature) and argmax ignore, so a distillation step can
        use them instead of running the teacher on ``mixed`` again."""
        if self.probs is None:
            raise ValueError("this MixResult has no teacher probabilities (an unlabelled blind mix)")
        return self.probs.float().clamp_min(torch.finfo(torch.float32).tiny).log()

    def masks(self) -> torch.Tensor:
        """Normalised full-resolution masks [B,k,H,W] (eq. 4); they sum to 1 over k."""
        if self.full_masks is not None:
            return self.full_masks
        if self.mask_logits is None:
            raise ValueError("this MixResult has neither mask_logits nor full_masks")
        return normalised_masks_ref(self.mask_logits.float(), tuple(self.mixed.shape[-2:]))

    def __len__(self) -> int:
        return self.mixed.shape[0]

    def select(self, index: torch.Tensor) -> "MixResult":
        """The samples at ``index`` (a bool mask or int64 indices over B)."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name != "labels":
                value = value[index]
            picked[f.name] = value
        return MixResult(**picked)

    def summary(self) -> dict:
        """Success rate, mean iterations (over all and over successful samples), counts."""
        n = len(self)
        ok = self.success
        return {
            "samples": n,
            "success_rate": float(ok.float().mean()) if n else float("nan"),
            "mean_iters": float(self.iters.float().mean()) if n else float("nan"),
            "mean_iters_successful": float(self.iters[ok].float().mean()) if ok.any() else float("nan"),
            "failed": int((~ok).sum()),
        }


def _margin_gd_rate(grad: torch.Tensor, going: torch.Tensor) -> float:
    """The learning rate that moves the median stepping sample's largest logit by
    ``MARGIN_GD_FIRST_STEP``: it follows the teacher's gradient scale, so no rate is tuned."""
    largest = grad[going].flatten(1).abs().amax(dim=1)
    return MARGIN_GD_FIRST_STEP / max(float(largest.median()), 1e-12)


# --------------------------------------------------------------------------------- checks ----
def _check_solve_args(teacher, images, config: SolverConfig):
    """The checks that need the data; the settings were checked by ``SolverConfig``."""
    if not isinstance(teacher, nn.Module) and not callable(teacher):
        raise TypeError(f"solve: teacher must be an nn.Module or callable, got {type(teacher).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"solve: images must be a tensor [N,C,H,W], got {got}")
    if not images.is_floating_point():
        raise TypeError(f"solve: images must be floating point, got {images.dtype}")
    if config.k > images.shape[0]:
        raise ValueError(f"solve: k={config.k} sources need a batch of at least k images, got N={images.shape[0]}")
    h, w = config.mask_size
    H, W = images.shape[-2:]
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"solve: mask_size must be between 1x1 and the image size {H}x{W}, got {h}x{w}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("solve: images must be finite, got NaN or infinite values")


def _check_weights(weights, n: int, k: int, device) -> torch.Tensor:
    """User mixing weights [N,k]: finite, >= 0, rows summing to 1."""
    if not isinstance(weights, torch.Tensor) or weights.shape != (n, k) or not weights.is_floating_point():
        got = (f"{list(weights.shape)} {weights.dtype}" if isinstance(weights, torch.Tensor)
               else type(weights).__name__)
        raise ValueError(f"solve: weights must be a float tensor [N={n}, k={k}], got {got}")
    weights = weights.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("solve: weights must be finite and >= 0")
    worst = float((weights.sum(dim=1) - 1).abs().max())
    if worst > 1e-4:
        raise ValueError(f"solve: weights' rows must sum to 1, got a row {worst:.3g} away")
    return weights


def _check_plugin(name: str, value, active: int, boolean: bool) -> None:
    """An objective returns a finite float [A]; a success rule a bool [A]."""
    kind = "a bool tensor" if boolean else "a finite float tensor"
    if (not isinstance(value, torch.Tensor) or value.shape != (active,)
            or (value.dtype != torch.bool if boolean else not value.is_floating_point())):
        got = f"{list(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"solve: {name} must return {kind} [A={active}] (one value per active "
                         f"sample), got {got}")
    if not boolean and not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"solve: {name} returned non-finite values (NaN or inf) for "
                         f"{int((~torch.isfinite(value.detach())).sum())} of {active} samples")


@contextlib.contextmanager
def eval_mode(module):
    """Run ``module`` (an nn.Module, or any callable) in eval mode, then give every submodule
    back the mode it had: a frozen BatchNorm inside a training model stays frozen."""
    if not isinstance(module, nn.Module):
        yield module
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _teacher_logits(teacher, x, autocast_dtype, channels_last) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (
        torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        out = teacher(x)
    _check_teacher_output(out, x.shape[0])
    return out.float()


def _check_teacher_output(out, n: int) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"solve: teacher must map [N,C,H,W] to logits [N, classes>=2]; for N={n} it returned {got}")


def _check_finite_logits(out: torch.Tensor, what: str) -> None:
    """A teacher that returns NaN/inf would make every label and image after it meaningless."""
    bad = ~torch.isfinite(out).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise FloatingPointError(
            f"solve: the teacher returned non-finite logits (NaN or inf) on {int(bad.sum())} of {out.shape[0]} "
            f"{what} (first at row {first}); check the teacher's weights and the input normalisation")


# ---------------------------------------------------------------------------------- solve ----
# Most of solve() is the public entry point's docstring (every argument and plug-in); the rest
# checks the arguments, labels the sources, draws the problem and calls the loop.
def solve(
    teacher,
    images: torch.Tensor,
    config: SolverConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    sources: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    objective=None,
    success=None,
    source_logits: torch.Tensor | None = None,
    **overrides,
) -> MixResult:
    """Mix a batch with SuperMix (Algorithm 1), a Table 4 baseline, or a user's own problem.

    Args:
        teacher: any module mapping images [N,C,H,W] to class logits [N,n]; run in eval mode.
        images: [N,C,H,W] float images as the teacher consumes them (normalised).
        config: the settings (``SolverConfig``; default its defaults). Keyword ``overrides``
            (``k=3, max_iters=20, ...``, any ``SolverConfig`` field) replace single values.
        generator: random source for the sets and the weights (on the images' device).
        sources: optional [N,k] source indices; default: cyclic shifts of a random permutation.
        weights: optional [N,k] mixing weights r (rows summing to 1) instead of the Dirichlet
            draw (eq. 2); with ``sources`` the whole problem is the caller's.
        objective: optional ``f(state) -> [A]`` per-sample loss the method descends (its value
            and gradient, as eq. 6/7 use them; see ``SolveState``); default the method's own
            (``OBJECTIVES``: ``margin_gd_objective``, ``newton_sp_objective``, ``tv_objective``).
        success: optional ``g(state) -> [A] bool`` stopping rule; default ``paper_success``.
        source_logits: optional [N,n] teacher logits of ``images``, when the caller has them
            already (a distillation step computes them for its KD term): the solver then skips
            its own teacher pass over the sources. They give the source labels (argmax).

    Returns:
        A ``MixResult`` with one mixed image per input image.
    """
    if config is None:
        config = SolverConfig()
    elif not isinstance(config, SolverConfig):
        raise TypeError(f"solve: config must be a SolverConfig, got {type(config).__name__}")
    config = config.replace(**overrides)
    _check_solve_args(teacher, images, config)
    for name, fn in (("objective", objective), ("success", success)):
        if fn is not None and not callable(fn):
            raise TypeError(f"solve: {name} must be a callable f(state), got {type(fn).__name__}")
    k = config.k
    start = time.perf_counter()
    device = images.device
    n_images = images.shape[0]
    resolve_backend(device, config.backend)  # fail early on an unusable backend
    stats = SolveStats()
    with eval_mode(teacher):
        if source_logits is None:
            with torch.no_grad():
                source_logits = _teacher_logits(teacher, images, config.autocast_dtype,
                                                config.channels_last)
            stats.forward_calls += 1
            stats.forward_samples += n_images
        elif source_logits.dim() != 2 or source_logits.shape[0] != n_images:
            raise ValueError(f"solve: source_logits must have shape [N={n_images}, classes], "
                             f"got {list(source_logits.shape)}")
        source_logits = source_logits.detach().to(device)
        _check_finite_logits(source_logits, "source images")
        labels = source_logits.argmax(dim=1)
        n_classes = source_logits.shape[1]

        if sources is None:
            sources = cyclic_sources(n_images, k, generator, device).to(device)
        elif sources.shape != (n_images, k):
            raise ValueError(f"solve: sources must have shape [N={n_images}, k={k}], got {list(sources.shape)}")
        sources = sources.to(device=device, dtype=torch.long)
        if weights is None:
            weights = sample_dirichlet(n_images, k, config.alpha, generator, device).to(device)
        else:
            weights = _check_weights(weights, n_images, k, device)
        source_labels = labels[sources]
        targets = torch.zeros(n_images, n_classes, device=device).scatter_add_(1, source_labels, weights)
        present = torch.zeros(n_images, n_classes, dtype=torch.bool, device=device)
        present.scatter_(1, source_labels, True)
        num_present = present.sum(dim=1)

        problem = _Problem(images, sources, source_labels, weights, targets, present, num_present)
        result = _iterate(teacher, problem, config, stats, objective, success)
    mixed, mask_logits, probs, iters, success_flags = result
    stats.seconds = time.perf_counter() - start
    return MixResult(
        mixed=mixed, mask_logits=mask_logits, sources=sources, weights=weights, targets=targets,
        probs=probs, iters=iters, success=success_flags, labels=labels, stats=stats,
    )


@dataclass
class _Problem:
    """One batch's fixed data: the images, the sets, their weights and targets."""

    images: torch.Tensor
    sources: torch.Tensor
    source_labels: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor
    present: torch.Tensor
    num_present: torch.Tensor


def _iterate(teacher, problem: _Problem, config: SolverConfig, stats: SolveStats,
             objective=None, success=None):
    """The shared loop: check, then step, on the active samples only."""
    images, sources = problem.images, problem.sources
    device = images.device
    B, k = sources.shape
    H, W = images.shape[-2:]
    method = config.method
    user_objective, user_success = objective is not None, success is not None
    objective = objective or OBJECTIVES[method]
    success = success or paper_success
    logits_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    mask_logits = torch.zeros(B, k, *config.mask_size, dtype=logits_dtype, device=device)
    mixed_out = torch.empty(B, *images.shape[1:], dtype=images.dtype, device=device)
    probs_out = torch.empty(B, problem.targets.shape[1], device=device)
    iters = torch.zeros(B, dtype=torch.long, device=device)
    reached_out = torch.zeros(B, dtype=torch.bool, device=device)
    active = torch.arange(B, device=device)
    stacked = images[sources]  # [B,k,C,H,W]
    rate = config.lr  # margin_gd replaces it with the calibrated rate at its first step

    for t in range(config.max_iters + 1):
        logits = mask_logits[active].requires_grad_(True)
        with torch.enable_grad():
            mixed, sparsity = mix(stacked[active], logits, backend=config.backend)
            out = _teacher_logits(teacher, mixed, config.autocast_dtype, config.channels_last)
        _check_finite_logits(out.detach(), f"mixed images at iteration {t}")
        stats.forward_calls += 1
        stats.forward_samples += active.numel()
        log_probs = F.log_softmax(out, dim=1)
        state = SolveState(
            iteration=t, config=config, mask_logits=logits, mixed=mixed, sparsity=sparsity,
            log_probs=log_probs, probs=log_probs.detach().exp(), targets=problem.targets[active],
            present=problem.present[active], num_present=problem.num_present[active],
            source_labels=problem.source_labels[active], weights=problem.weights[active],
            rows=active, image_size=(H, W))
        reached = success(state)
        if user_success:
            _check_plugin("success", reached, active.numel(), boolean=True)
        done = reached & (t >= config.min_iters)
        mixed_out[active] = mixed.detach()
        probs_out[active] = state.probs
        reached_out[active] = reached
        going = ~done
        if t == config.max_iters or not bool(going.any()):
            break

        with torch.enable_grad():
            loss = objective(state)
            if user_objective:
                _check_plugin("objective", loss, active.numel(), boolean=False)
                if not loss.requires_grad:
                    raise ValueError("solve: objective's value has no gradient with respect to "
                                     "state.mask_logits (it must be computed from the state's "
                                     "differentiable fields)")
            (grad,) = torch.autograd.grad(loss.sum(), [logits], allow_unused=user_objective)
        if grad is None:
            raise ValueError("solve: objective's value does not depend on state.mask_logits "
                             "(no gradient)")
        stats.backward_calls += 1
        stats.backward_samples += active.numel()
        with torch.no_grad():
            logits = logits.detach()
            if method in ("sgd", "margin_gd"):
                if method == "margin_gd" and t == 0:
                    rate = _margin_gd_rate(grad, going)
                updated = torch.where(going.view(-1, 1, 1, 1), logits - rate * grad, logits)
            else:
                step_sigma = float(config.sigma) if method == "newton_sp" else 0.0
                updated = newton_step(logits, grad, loss.detach(), going, step_sigma,
                                      backend=config.backend)
            if not bool(torch.isfinite(updated).all()):
                raise FloatingPointError(f"solve: the {method} step at iteration {t} produced non-finite mask logits; "
                                         "the teacher's gradient is NaN or inf")
            mask_logits[active] = updated
            iters[active[going]] += 1
            active = active[going]
    return mixed_out, mask_logits.float(), probs_out, iters, reached_out
