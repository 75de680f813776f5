"""The problem ``supermix.solve`` solves, in the pieces a user can call and replace: the success
rule, the losses (KL to the Dirichlet target, TV, margin_gd's hinge), the state a plug-in sees
(:class:`SolveState`), each method's default objective and the paper's stopping rule
(docs/TOOLKIT.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from supermix_ext.reference import normalised_masks_ref

from .config import METHODS, SolverConfig

__all__ = ["is_success", "total_variation", "success_margin_hinge", "SolveState", "kl_to_target",
           "newton_sp_objective", "tv_objective", "margin_gd_objective", "OBJECTIVES",
           "default_objective", "paper_success", "MARGIN_GD_HINGE_WEIGHT", "MARGIN_GD_MARGIN"]

# margin_gd's hinge, fixed once on the shipped teacher and held on every other teacher, mask
# size and k (benchmarks/RESULTS.md): the weight and width (in log-probability) of the hinge
# that pushes each source class above the strongest class that is not a source.
MARGIN_GD_HINGE_WEIGHT = 1.0
MARGIN_GD_MARGIN = 0.5


# ---------------------------------------------------------------------------- success rule ----
def is_success(probs: torch.Tensor, present: torch.Tensor, num_present: torch.Tensor, k: int) -> torch.Tensor:
    """Termination criterion (paper sec. 3): the top-u classes are the u distinct source labels.

    Args:
        probs: [A,n] teacher probabilities; present: [A,n] bool, the set's labels;
        num_present: [A] u = number of distinct labels (<= k); k: set size.
    """
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    hit = present.gather(1, top)
    within_u = torch.arange(top.shape[1], device=probs.device).unsqueeze(0) < num_present.unsqueeze(1)
    return (hit | ~within_u).all(dim=1)


# --------------------------------------------------------------------------------- losses ----
def total_variation(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-sample TV of the full-resolution masks, (1/kWH) sum |grad m|_3^3 (paper sec. 4.4)."""
    m = normalised_masks_ref(mask_logits, size)
    k, (H, W) = m.shape[1], size
    dy = (m[:, :, 1:, :] - m[:, :, :-1, :]).abs().pow(3).sum(dim=(1, 2, 3))
    dx = (m[:, :, :, 1:] - m[:, :, :, :-1]).abs().pow(3).sum(dim=(1, 2, 3))
    return (dx + dy) / (k * H * W)


def success_margin_hinge(log_probs: torch.Tensor, present: torch.Tensor, margin: float) -> torch.Tensor:
    """[A] sum over the set's labels c of relu(max_{j not in set} log p_j - log p_c + margin).

    Zero exactly when every source class leads every other class by ``margin`` in
    log-probability, which implies the success rule; its gradient lifts only the sources that
    are still behind. Args: log_probs [A,n], present [A,n] bool.
    """
    strongest_other = log_probs.masked_fill(present, -math.inf).amax(dim=1, keepdim=True)
    behind = F.relu(strongest_other - log_probs + margin)
    return (behind * present).sum(dim=1)


# ----------------------------------------------------------------------- plug-in state ----
@dataclass
class SolveState:
    """What an objective or a success rule sees at one iteration: the A samples still active.

    Attributes:
        iteration: t, the number of steps taken so far (0 at the uniform start).
        config: the solver's settings.
        mask_logits: [A,k,h,w] the mask logits, requiring grad (the objective's variable).
        mixed: [A,C,H,W] the mixed images (eq. 1), differentiable in ``mask_logits``.
        sparsity: [A] L_s of the masks (eq. 5), differentiable.
        log_probs: [A,n] the teacher's log-softmax on ``mixed``, differentiable.
        probs: [A,n] the teacher's softmax on ``mixed``, detached.
        targets: [A,n] y_hat = sum_i r_i onehot(y_i) (eq. 3).
        present: [A,n] bool, the sources' classes; num_present: [A] how many distinct.
        source_labels: [A,k] the teacher's labels of the sources; weights: [A,k] r.
        rows: [A] int64, the batch rows these samples are.
        image_size: (H, W).
    """

    iteration: int
    config: SolverConfig
    mask_logits: torch.Tensor
    mixed: torch.Tensor
    sparsity: torch.Tensor
    log_probs: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    present: torch.Tensor
    num_present: torch.Tensor
    source_labels: torch.Tensor
    weights: torch.Tensor
    rows: torch.Tensor
    image_size: tuple[int, int]


def kl_to_target(state: SolveState) -> torch.Tensor:
    """[A] KL(y_hat || teacher(mixed)), the data term of eq. 6/7."""
    return F.kl_div(state.log_probs, state.targets, reduction="none").sum(dim=1)


def newton_sp_objective(state: SolveState) -> torch.Tensor:
    """[A] L'_SM = KL + lambda_s L_s (eq. 7's loss; the paper's newton_sp)."""
    return kl_to_target(state) + state.config.lambda_s * state.sparsity


def tv_objective(state: SolveState) -> torch.Tensor:
    """[A] L_SM = KL + lambda_s L_s + lambda_tv TV (eq. 6's loss; the newton and sgd
    baselines of Table 4)."""
    return newton_sp_objective(state) + state.config.lambda_tv * total_variation(
        state.mask_logits, state.image_size)


def margin_gd_objective(state: SolveState) -> torch.Tensor:
    """[A] KL + lambda_s L_s + the success-margin hinge (margin_gd, docs/SOLVER.md)."""
    return newton_sp_objective(state) + MARGIN_GD_HINGE_WEIGHT * success_margin_hinge(
        state.log_probs, state.present, MARGIN_GD_MARGIN)


# Each method's own loss: what it descends when no objective is given.
OBJECTIVES = {"margin_gd": margin_gd_objective, "newton_sp": newton_sp_objective,
              "newton": tv_objective, "sgd": tv_objective}


def default_objective(method: str):
    """The loss ``method`` descends by default (``OBJECTIVES[method]``)."""
    if method not in OBJECTIVES:
        raise ValueError(f"solve: method must be one of {METHODS}, got {method!r}")
    return OBJECTIVES[method]


def paper_success(state: SolveState) -> torch.Tensor:
    """[A] bool, the paper's termination criterion (sec. 3): the teacher's top-u classes on the
    mixed image are the sources' u distinct classes."""
    return is_success(state.probs, state.present, state.num_present, state.config.k)
