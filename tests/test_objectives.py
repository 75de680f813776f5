"""``supermix.training.objectives`` against values computed here (fast enough to run under mutation
testing, scripts/mutation.sh objectives).

Nothing here calls the module's own functions to build an expectation: KD is T^2 * KL written out
as explicit sums over classes and rows, cross-entropy as -log of a softmax computed by hand, the
distillation objective as the weighted sum of those, and the mixed-set labels from the fields of a
``GeneratedSet`` built in the test.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from supermix.losses import soft_target_cross_entropy
from supermix.mixed_set import GeneratedSet
from supermix.training import objectives
from supermix.training.objectives import (MIXED_LABELS, DistillWeights, ce_loss, ce_to_teacher_top1,
                                          distill_objective, kd_loss, mixed_targets,
                                          soft_cross_entropy)

LN3 = math.log(3.0)


# ------------------------------------------------------------------------------- oracles ----
def _softmax(row: list[float], T: float = 1.0) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def oracle_kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> float:
    """T^2 * (1/B) sum_b sum_c p_bc (ln p_bc - ln q_bc), p = softmax(t/T), q = softmax(s/T)."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        p, q = _softmax(t_row, T), _softmax(s_row, T)
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return T * T * total / student.shape[0]


def oracle_ce(student: torch.Tensor, labels: list[int]) -> float:
    """(1/B) sum_b -ln softmax(s_b)[label_b]."""
    rows = student.double().tolist()
    return sum(-math.log(_softmax(row)[c]) for row, c in zip(rows, labels)) / len(rows)


def _top1(teacher: torch.Tensor) -> list[int]:
    """Each row's largest entry, by a loop (rows here have no ties)."""
    return [max(range(len(row)), key=row.__getitem__) for row in teacher.tolist()]


def _logits(seed: int, B: int = 3, n: int = 5, dtype=torch.float32) -> torch.Tensor:
    # B != n, so that reducing or normalising over the wrong dimension changes the result.
    return 2 * torch.randn(B, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------- kd_loss ----
def test_kd_loss_by_hand():
    # p = softmax([ln 3, 0]) = (3/4, 1/4), q = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2).
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s = torch.tensor([[0.0, 0.0]])
    assert kd_loss(s, torch.tensor([[LN3, 0.0]]), T=1.0).item() == pytest.approx(kl, rel=1e-6)
    # T = 2 on doubled logits: the same p and q, times T^2 = 4.
    assert kd_loss(2 * s, torch.tensor([[2 * LN3, 0.0]]), T=2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    # KL(p || q), not KL(q || p): 1/2 ln(2/3) + 1/2 ln(2) differs.
    assert kd_loss(torch.tensor([[LN3, 0.0]]), s, T=1.0).item() == pytest.approx(
        0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.5, 4.0, 7.0])
def test_kd_loss_against_explicit_sums(T):
    s, t = _logits(1), _logits(2)
    value = kd_loss(s, t, T)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_kd(s, t, T), rel=1e-5, abs=1e-7)


def test_kd_loss_default_temperature_is_4():
    s, t = _logits(3), _logits(4)
    assert kd_loss(s, t).item() == pytest.approx(oracle_kd(s, t, 4.0), rel=1e-5)
    assert kd_loss(s, t).item() != pytest.approx(oracle_kd(s, t, 1.0), rel=1e-3)


def test_kd_loss_is_a_mean_over_rows():
    s, t = _logits(5, B=4), _logits(6, B=4)
    rows = [oracle_kd(s[b:b + 1], t[b:b + 1], 3.0) for b in range(4)]
    assert kd_loss(s, t, 3.0).item() == pytest.approx(sum(rows) / 4, rel=1e-5)
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_computes_in_float32():
    s, t = _logits(7, dtype=torch.float64), _logits(8, dtype=torch.float64)
    value = kd_loss(s, t, 2.0)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_kd(s, t, 2.0), rel=1e-5)
    half = kd_loss(s.half(), t.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(oracle_kd(s.half(), t.bfloat16(), 2.0), rel=1e-5)


def test_objectives_emit_no_warnings():
    """No deprecated calls: softmax without dim= warns (and picks dim 1 of a 2-D tensor)."""
    s, t = _logits(17), _logits(18)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kd_loss(s, t, 2.0)
        ce_loss(s, torch.tensor([0, 1, 2]))
        ce_to_teacher_top1(s, t)
        distill_objective(DistillWeights(ce=1.0, kd=1.0, mixed_ce=1.0, mixed_kd=1.0), s, torch.tensor([0, 1, 2]),
                          t, s, t)
        mixed_targets(_generated(), "teacher_top1")


def test_kd_loss_gradient_is_T_times_q_minus_p_over_B():
    s = _logits(9, B=4, n=6).requires_grad_(True)
    t = _logits(10, B=4, n=6)
    T = 3.0
    kd_loss(s, t, T).backward()
    q = torch.softmax(s.detach() / T, 1)
    p = torch.softmax(t / T, 1)
    torch.testing.assert_close(s.grad, T * (q - p) / 4, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------ cross-entropies ----
def test_ce_loss_by_hand():
    s = torch.tensor([[LN3, 0.0], [0.0, LN3]])        # softmax rows (3/4, 1/4), (1/4, 3/4)
    assert ce_loss(s, torch.tensor([0, 0])).item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    s, labels = _logits(11), [4, 0, 2]
    value = ce_loss(s, torch.tensor(labels))
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s, labels), rel=1e-5)


def test_ce_loss_computes_in_float32():
    s, labels = _logits(12, dtype=torch.float64), [1, 3, 3]
    value = ce_loss(s, torch.tensor(labels))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s, labels), rel=1e-5)
    value = ce_loss(s.half(), torch.tensor(labels))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s.half(), labels), rel=1e-5)


def test_ce_to_teacher_top1_by_hand():
    s = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    # The teacher's top class is 1 on both rows whatever its confidence.
    t = torch.tensor([[-5.0, 5.0], [0.1, 0.2]])
    assert ce_to_teacher_top1(s, t).item() == pytest.approx(
        (-math.log(0.25) - math.log(0.75)) / 2, rel=1e-6)
    s, t = _logits(13, B=4, n=3), _logits(14, B=4, n=3)
    value = ce_to_teacher_top1(s, t)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s, _top1(t)), rel=1e-5)


def test_ce_to_teacher_top1_computes_in_float32():
    s, t = _logits(15, dtype=torch.float64), _logits(16, dtype=torch.float64)
    value = ce_to_teacher_top1(s, t)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s, _top1(t)), rel=1e-5)
    value = ce_to_teacher_top1(s.half(), t)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(oracle_ce(s.half(), _top1(t)), rel=1e-5)


# ------------------------------------------------------------------------- DistillWeights ----
def test_distill_weights_defaults():
    w = DistillWeights()
    assert (w.ce, w.kd, w.mixed_ce, w.mixed_kd, w.T) == (1.0, 0.0, 0.0, 0.0, 4.0)
    assert not w.needs_mixed
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.ce = 0.5


@pytest.mark.parametrize(
    "kwargs,needed",
    [
        (dict(), False),
        (dict(ce=0.0, kd=1.0), False),
        (dict(mixed_ce=0.5), True),
        (dict(mixed_kd=0.5), True),
        (dict(mixed_ce=0.5, mixed_kd=0.5), True),
        (dict(mixed_ce=1e-9), True),
        (dict(mixed_kd=1e-9), True),
    ],
)
def test_needs_mixed_when_a_mixed_term_has_weight(kwargs, needed):
    assert DistillWeights(**kwargs).needs_mixed is needed


# ---------------------------------------------------------------------- distill_objective ----
def _four(seed=20, dtype=torch.float32):
    s, t = _logits(seed, dtype=dtype), _logits(seed + 1, dtype=dtype)
    sm, tm = _logits(seed + 2, B=4, dtype=dtype), _logits(seed + 3, B=4, dtype=dtype)
    return s, t, sm, tm


def test_distill_objective_is_the_weighted_sum_of_hand_values():
    s, t, sm, tm = _four()
    labels = [2, 0, 4]
    w = DistillWeights(ce=0.1, kd=0.9, mixed_ce=0.5, mixed_kd=0.25, T=2.0)
    total, parts = distill_objective(w, s, torch.tensor(labels), t, sm, tm)
    expected = {"ce": oracle_ce(s, labels), "kd": oracle_kd(s, t, 2.0),
                "mixed_ce": oracle_ce(sm, _top1(tm)), "mixed_kd": oracle_kd(sm, tm, 2.0)}
    assert list(parts) == ["ce", "kd", "mixed_ce", "mixed_kd"]
    for name, value in expected.items():
        assert parts[name].dim() == 0 and parts[name].dtype == torch.float32, name
        assert parts[name].item() == pytest.approx(value, rel=1e-5), name
    assert total.dim() == 0 and total.dtype == torch.float32
    assert total.item() == pytest.approx(0.1 * expected["ce"] + 0.9 * expected["kd"] + 0.5 * expected["mixed_ce"]
                                         + 0.25 * expected["mixed_kd"], rel=1e-5)


@pytest.mark.parametrize("only", ["ce", "kd", "mixed_ce", "mixed_kd"])
def test_zero_weight_terms_are_skipped_and_may_have_no_inputs(only):
    s, t, sm, tm = _four(30)
    labels = [1, 1, 3]
    weights = dict(ce=0.0, kd=0.0, mixed_ce=0.0, mixed_kd=0.0, T=3.0)
    weights[only] = 0.7
    inputs = {"ce": (s, torch.tensor(labels), None, None, None),
              "kd": (s, None, t, None, None),
              "mixed_ce": (s, None, None, sm, tm),
              "mixed_kd": (s, None, None, sm, tm)}[only]
    expected = {"ce": lambda: oracle_ce(s, labels), "kd": lambda: oracle_kd(s, t, 3.0),
                "mixed_ce": lambda: oracle_ce(sm, _top1(tm)), "mixed_kd": lambda: oracle_kd(sm, tm, 3.0)}[only]()
    total, parts = distill_objective(DistillWeights(**weights), *inputs)
    assert list(parts) == [only]
    assert parts[only].item() == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(0.7 * expected, rel=1e-5)


def test_the_temperature_reaches_both_kd_terms():
    s, t, sm, tm = _four(40)
    for T in (1.0, 5.0):
        _, parts = distill_objective(DistillWeights(ce=0.0, kd=1.0, mixed_kd=1.0, T=T), s, None, t, sm, tm)
        assert parts["kd"].item() == pytest.approx(oracle_kd(s, t, T), rel=1e-5)
        assert parts["mixed_kd"].item() == pytest.approx(oracle_kd(sm, tm, T), rel=1e-5)


def test_no_active_term_gives_a_float32_zero():
    s = _logits(50, dtype=torch.float64)
    total, parts = distill_objective(DistillWeights(ce=0.0), s, None)
    assert parts == {}
    assert total.dim() == 0 and total.dtype == torch.float32 and total.item() == 0.0
    assert total.device == s.device


def test_total_is_float32_for_float64_logits():
    s, t, sm, tm = _four(60, dtype=torch.float64)
    total, parts = distill_objective(DistillWeights(ce=1.0, kd=1.0, mixed_ce=1.0, mixed_kd=1.0), s,
                                     torch.tensor([0, 1, 2]), t, sm, tm)
    assert total.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in parts.values())


def test_parts_are_detached_and_the_total_carries_the_gradient():
    s, t, sm, tm = _four(70)
    s.requires_grad_(True)
    sm.requires_grad_(True)
    w = DistillWeights(ce=0.5, kd=2.0, mixed_ce=0.0, mixed_kd=3.0, T=2.0)
    labels = torch.tensor([3, 1, 0])
    total, parts = distill_objective(w, s, labels, t, sm, tm)
    assert not any(p.requires_grad for p in parts.values())
    assert total.requires_grad
    total.backward()
    # d/ds of 0.5 CE + 2 KD: 0.5 (softmax(s) - onehot)/B + 2 T (q - p)/B; d/dsm of 3 KD likewise.
    B = 3
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    grad_s = 0.5 * (torch.softmax(s.detach(), 1) - onehot) / B \
        + 2.0 * 2.0 * (torch.softmax(s.detach() / 2, 1) - torch.softmax(t / 2, 1)) / B
    grad_sm = 3.0 * 2.0 * (torch.softmax(sm.detach() / 2, 1) - torch.softmax(tm / 2, 1)) / 4
    torch.testing.assert_close(s.grad, grad_s, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sm.grad, grad_sm, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- mixed labels ----
def _generated():
    probs = torch.tensor([[0.2, 0.7, 0.1, 0.0], [0.6, 0.3, 0.05, 0.05], [0.1, 0.1, 0.1, 0.7]])
    y_hat = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.3, 0.7, 0.0], [0.25, 0.25, 0.25, 0.25]])
    return GeneratedSet(path=None, images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8), y_hat=y_hat,
                        teacher_probs=probs, manifest={})


def test_mixed_targets_for_each_label():
    g = _generated()
    assert MIXED_LABELS == ("y_hat", "teacher_probs", "teacher_top1")
    assert mixed_targets(g, "y_hat") is g.y_hat
    assert mixed_targets(g, "teacher_probs") is g.teacher_probs
    top1 = mixed_targets(g, "teacher_top1")
    assert top1.dtype == torch.float32
    assert torch.equal(top1, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_teacher_top1_width_is_the_teacher_width_not_the_top_class():
    # The top classes here are 0 and 1 only: the one-hot rows must still be 4 wide.
    g = _generated()
    g.teacher_probs = torch.tensor([[0.9, 0.05, 0.05, 0.0], [0.1, 0.8, 0.1, 0.0], [0.6, 0.2, 0.1, 0.1]])
    top1 = mixed_targets(g, "teacher_top1")
    assert torch.equal(top1, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_soft_cross_entropy_is_the_mixers_loss():
    assert soft_cross_entropy is soft_target_cross_entropy
    assert set(objectives.__all__) >= {"kd_loss", "ce_loss", "ce_to_teacher_top1", "DistillWeights",
                                       "distill_objective", "mixed_targets", "MIXED_LABELS", "soft_cross_entropy"}
