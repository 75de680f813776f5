"""supermix.study (the statistics of scripts/replicate_fmnist.py) against independent oracles,
and generate's --min-iters, which the study's ablation uses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from supermix.errors import UsageError
from supermix.study import (Interval, holm, mean_interval, mixed_set_statistics,
                            paired_difference, paired_p_value, spearman_rho, t_quantile_975,
                            t_two_sided_p)
from testing import make_generated, make_teacher


def student_t_cdf(q: float, df: int, steps: int = 20000) -> float:
    """P(T <= q) by Simpson's rule on the t density (the oracle of the quantile table)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(x):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    h = q / steps
    total = pdf(0) + pdf(q) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 9, 13, 20, 29, 30, 31, 45, 100, 1000])
def test_t_quantile_is_the_975_point(df):
    # The table has three decimals: the CDF there is within the density times 5e-4 of 0.975.
    assert student_t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2.5e-4)


@pytest.mark.parametrize("df", [0, -1, 2.0, True])
def test_t_quantile_rejects_bad_df(df):
    with pytest.raises(ValueError, match="df must be an int >= 1"):
        t_quantile_975(df)


@pytest.mark.parametrize("t, df", [(0.3, 1), (2.5, 2), (1.0, 4), (2.2, 11), (3.7, 11),
                                   (0.05, 30), (4.0, 60), (-2.2, 11)])
def test_t_two_sided_p_is_the_tail_area(t, df):
    """Against the Simpson-rule CDF of the t density (an independent computation)."""
    assert t_two_sided_p(t, df) == pytest.approx(2 * (1 - student_t_cdf(abs(t), df)),
                                                 rel=1e-6, abs=1e-9)


def test_t_two_sided_p_edges():
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert t_two_sided_p(math.inf, 5) == 0.0
    # At the 97.5% quantile the two-sided p is 5% (to the table's three decimals).
    assert t_two_sided_p(t_quantile_975(11), 11) == pytest.approx(0.05, abs=2e-4)
    with pytest.raises(ValueError, match="df must be an int >= 1"):
        t_two_sided_p(1.0, 0)


def test_paired_p_value_is_the_paired_t_test():
    diffs = {0: 0.012, 1: -0.004, 2: 0.020, 3: 0.007, 4: 0.015}
    values = list(diffs.values())
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    t = mean / (sd / math.sqrt(5))
    assert paired_p_value(diffs) == pytest.approx(2 * (1 - student_t_cdf(t, 4)), rel=1e-6)
    assert math.isnan(paired_p_value({0: 0.01}))
    assert paired_p_value({0: 0.01, 1: 0.01}) == 0.0
    assert paired_p_value({0: 0.0, 1: 0.0}) == 1.0


def _holm_by_definition(p: list[float], level: float) -> list[bool]:
    """Holm's procedure as stated: test the smallest p at level/m, the next at level/(m-1),
    ..., stop at the first that fails; the rejected ones are the ones before it."""
    m = len(p)
    rejected = [False] * m
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > level / (m - rank):
            break
        rejected[i] = True
    return rejected


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.001, 0.013, 0.02, 0.5],
                               [0.04], [0.3, 0.3, 0.01]])
def test_holm_rejects_what_the_procedure_rejects(p):
    adjusted = holm(p)
    for level in (0.01, 0.05, 0.1):
        assert [a <= level for a in adjusted] == _holm_by_definition(p, level), level
    assert all(a >= q for a, q in zip(adjusted, p)) and max(adjusted) <= 1.0


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03 (monotone), 1 x 0.04 -> 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_spearman_rho_against_the_rank_difference_formula():
    x = list(range(9))
    y = [3.1, 0.2, 5.5, 4.4, 9.0, 7.7, 1.5, 8.8, 6.0]
    ranks_y = [sorted(y).index(v) for v in y]
    d2 = sum((a - b) ** 2 for a, b in zip(x, ranks_y))
    assert spearman_rho(x, y) == pytest.approx(1 - 6 * d2 / (9 * (81 - 1)))
    assert spearman_rho(x, [-v for v in x]) == pytest.approx(-1.0)
    # Ties take average ranks: y's ranks are 1.5, 1.5, 3, 4.
    assert spearman_rho([1, 2, 3, 4], [5, 5, 6, 7]) == pytest.approx(0.9486832980505138)
    with pytest.raises(ValueError, match="equal-length"):
        spearman_rho([1, 2], [1])


def test_mean_interval_by_hand():
    iv = mean_interval([0.81, 0.84, 0.86, 0.85])
    mean = (0.81 + 0.84 + 0.86 + 0.85) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in [0.81, 0.84, 0.86, 0.85]) / 3)
    assert iv.n == 4 and iv.mean == pytest.approx(mean)
    assert iv.half == pytest.approx(3.182 * sd / 2)
    assert (iv.low, iv.high) == pytest.approx((mean - iv.half, mean + iv.half))
    assert iv.text() == f"{100 * mean:.2f} ± {100 * iv.half:.2f}"
    single = mean_interval([0.5])
    assert single.n == 1 and math.isnan(single.half) and single.text() == "50.00"
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])


@pytest.mark.parametrize("values, excludes", [
    ([0.01, 0.012, 0.011], True), ([-0.01, -0.012, -0.011], True),
    ([0.01, -0.012, 0.002], False), ([0.01], False)])
def test_excludes_zero(values, excludes):
    assert mean_interval(values).excludes_zero is excludes


def test_paired_difference_takes_shared_seeds_in_order_a_minus_b():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 5: 0.5}
    b = {0: 0.88, 1: 0.81, 2: 0.80, 3: 0.7}
    iv, diffs = paired_difference(a, b)
    assert diffs == pytest.approx({0: 0.02, 1: -0.01, 2: 0.05})
    expected = mean_interval([0.02, -0.01, 0.05])
    assert (iv.mean, iv.half, iv.n) == pytest.approx((expected.mean, expected.half, 3))
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_interval_signed_text():
    assert Interval(0.0123, 0.004, 5).text(signed=True) == "+1.23 ± 0.40"
    assert Interval(-0.0123, 0.004, 5).text(signed=True) == "-1.23 ± 0.40"


# ----------------------------------------------------------------------------- mixed sets ---
@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-sets")
    teacher = make_teacher(root / "teacher.pt")
    return {mixer: make_generated(root / mixer, teacher, size=96, mixer=mixer)
            for mixer in ("supermix", "mixup", "cutmix")}


def shard_tensors(path) -> dict[str, torch.Tensor]:
    shards = [load_file(str(p)) for p in sorted(path.glob("shard-*.safetensors"))]
    return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


def expected_measures(t: dict[str, torch.Tensor], mixer: str) -> dict[str, float]:
    """The measures written out from their definitions, one sample at a time."""
    out = {"zero_iters": 0.0, "mask_sparsity": 0.0, "kl_to_target": 0.0, "top5_entropy": 0.0}
    n = t["iters"].shape[0]
    for i in range(n):
        out["zero_iters"] += float(t["iters"][i] == 0) / n
        if mixer == "supermix":
            z = F.interpolate(t["mask_logits"][i:i + 1].double(), size=t["mixed"].shape[-2:],
                              mode="bilinear", align_corners=False)[0]
            m = torch.sigmoid(z) / torch.sigmoid(z).sum(0)
            out["mask_sparsity"] += float((m - m * m).mean()) / n
        elif mixer == "mixup":
            r = t["r"][i].double()
            out["mask_sparsity"] += float(sum(v * (1 - v) for v in r) / len(r)) / n
        y, p = t["y_hat"][i].double(), t["teacher_probs"][i].double()
        out["kl_to_target"] += sum(float(y[c] * math.log(y[c] / p[c]))
                                   for c in range(len(y)) if y[c] > 0) / n
        top = sorted(p.tolist(), reverse=True)[:5]
        top = [v / sum(top) for v in top]
        out["top5_entropy"] += -sum(v * math.log(v) for v in top) / n
    return out


@pytest.mark.parametrize("mixer", ["supermix", "mixup", "cutmix"])
def test_mixed_set_statistics_against_their_definitions(sets, mixer):
    t = shard_tensors(sets[mixer])
    got = mixed_set_statistics(sets[mixer], chunk=7)
    assert got["n"] == t["iters"].shape[0] == 96
    for key, value in expected_measures(t, mixer).items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert 0 <= got["top5_entropy"] <= math.log(5) and got["kl_to_target"] >= 0
    if mixer == "cutmix":
        assert got["mask_sparsity"] == 0.0
    else:
        assert 0 < got["mask_sparsity"] <= 0.25


# ----------------------------------------------------------------------- generate --min-iters ---
def test_generate_min_iters_makes_every_sample_step(tmp_path):
    from supermix.generation import generate

    teacher = make_teacher(tmp_path / "teacher.pt")
    common = dict(teacher=teacher, mixer="supermix", shard_size=64, batch_size=64, device="cpu",
                  progress=False, keep_failed=True, log=lambda msg: None)
    plain = generate(tmp_path / "plain", 64, **common)
    stepped = generate(tmp_path / "stepped", 64, min_iters=2, **common)
    assert plain["config"]["min_iters"] == 0 and stepped["config"]["min_iters"] == 2
    plain_iters = shard_tensors(tmp_path / "plain")["iters"]
    stepped_iters = shard_tensors(tmp_path / "stepped")["iters"]
    assert int(stepped_iters.min()) >= 2
    # Same draws: every sample steps at least as often as without the floor.
    assert bool((stepped_iters >= plain_iters).all())


@pytest.mark.parametrize("options, fragment", [
    (dict(mixer="supermix", min_iters=51), "min_iters must be an int in [0, max_iters=50], got 51"),
    (dict(mixer="supermix", min_iters=-1), "min_iters must be an int in [0, max_iters=50], got -1"),
    (dict(mixer="mixup", min_iters=1), "min_iters: expected 0 for the blind mixers"),
])
def test_generate_min_iters_checks(tmp_path, options, fragment):
    from supermix.generation import generate

    teacher = make_teacher(tmp_path / "teacher.pt")
    with pytest.raises(UsageError) as e:
        generate(tmp_path / "out", 8, teacher=teacher, device="cpu", progress=False, **options)
    assert fragment in str(e.value)
