"""Mixers: the label contract, failures, prob, checks, and use in timm- and torchvision-style loops.

Expected labels are built by hand from what the returned images show (MixUp weights recovered by
least squares, CutMix weights by counting pixels, SuperMix labels by running the teacher on
x_mix), not from the mixers' own bookkeeping.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import supermix
from supermix.mixers import CutMix, MixUp, SuperMix, create_mixer
from testing import assert_close, hand_mixed_labels, shipped_teacher_and_test_images


def _teacher_and_images():
    teacher, images, labels = shipped_teacher_and_test_images()
    return teacher, images[:256], labels[:256]


@pytest.fixture
def teacher():
    return _teacher_and_images()[0]


@pytest.fixture
def batch():
    """32 real test images and their labels."""
    _, images, labels = _teacher_and_images()
    return images[:32], labels[:32]


# The paper's solver with few iterations, so that some samples fail; pinned, so that the
# failure-handling checks do not depend on which method is the default.
FEW_ITERS = dict(method="newton_sp", max_iters=3)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _teacher_view(teacher, x):
    """The teacher's softmax on x, computed here (eval mode, no grad)."""
    teacher.eval()
    with torch.no_grad():
        return F.softmax(teacher(x).float(), dim=1)


def _random_batch(B=6, C=2, H=8, W=8, seed=0):
    g = _gen(seed)
    return torch.rand(B, C, H, W, generator=g)


def _soft(B, n, seed=1):
    """Random soft labels [B,n], rows summing to 1."""
    return (3 * torch.rand(B, n, generator=_gen(seed))).softmax(dim=1)


# ------------------------------------------------------------------------ MixUp / CutMix ----
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_mixup_labels_are_the_blend_weights(k, soft):
    x = _random_batch(B=7)
    n = 9
    y = _soft(7, n) if soft else torch.tensor([0, 1, 2, 3, 8, 1, 5])
    mixer = MixUp(k=k, alpha=1.0, num_classes=n, generator=_gen(3))
    x_mix, y_mix = mixer(x, y)
    sources = mixer.last_result.sources
    # The weights the image really carries: least squares of x_mix on its k sources.
    weights = torch.stack([
        torch.linalg.lstsq(x[sources[b]].reshape(k, -1).T.double(), x_mix[b].reshape(-1, 1).double()).solution[:, 0]
        for b in range(7)])
    assert_close(weights.sum(dim=1), torch.ones(7), 1e-5, 0, "recovered weights sum")
    assert_close(y_mix, hand_mixed_labels(sources, weights, y, n), 1e-5, 1e-5, "MixUp y_mix")
    assert y_mix.dtype == torch.float32 and y_mix.shape == (7, n)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_cutmix_labels_are_covered_pixel_fractions(k, soft):
    B, n = 8, 6
    x = _random_batch(B=B, H=12, W=10)  # random pixels: each mixed pixel matches one source only
    y = _soft(B, n) if soft else torch.tensor([5, 0, 1, 1, 2, 3, 4, 0])
    mixer = CutMix(k=k, alpha=1.0, num_classes=n, generator=_gen(4))
    x_mix, y_mix = mixer(x, y)
    sources = mixer.last_result.sources
    owner = torch.stack([(x_mix == x[sources[:, i]]).all(dim=1) for i in range(k)], dim=1)  # [B,k,H,W]
    assert bool((owner.sum(dim=1) == 1).all()), "every pixel comes from exactly one source"
    fractions = owner.double().mean(dim=(2, 3))
    assert bool(((fractions > 0) & (fractions < 1)).any()), "no box was pasted: the check is vacuous"
    assert_close(y_mix, hand_mixed_labels(sources, fractions, y, n), 1e-6, 0, "CutMix y_mix")


def test_blind_mixers_with_a_teacher_label_by_the_teacher(teacher, batch):
    x, y = batch
    for mixer in (MixUp(teacher=teacher, generator=_gen()), CutMix(teacher=teacher, generator=_gen())):
        x_mix, y_mix = mixer(x, y)
        assert_close(y_mix, _teacher_view(teacher, x_mix), 1e-5, 1e-4, f"{mixer.name} teacher labels")
        target = type(mixer)(teacher=teacher, label="target", generator=_gen())
        x_t, y_t = target(x, y)
        assert_close(x_t, x_mix, 0, 0, f"{mixer.name}: same draws")
        assert_close(y_t, hand_mixed_labels(target.last_result.sources, target.last_result.weights, y, 10),
                     1e-6, 0, f"{mixer.name} target labels")


def test_label_smoothing():
    x = _random_batch(B=4)
    y = torch.tensor([0, 2, 2, 3])
    eps, n = 0.1, 4
    plain = MixUp(num_classes=n, generator=_gen(5))
    smooth = MixUp(num_classes=n, label_smoothing=eps, generator=_gen(5))
    _, y_plain = plain(x, y)
    _, y_smooth = smooth(x, y)
    assert_close(y_smooth, (1 - eps) * y_plain + eps / n, 1e-7, 0, "smoothed mix")
    _, y_none = MixUp(num_classes=n, label_smoothing=eps, prob=0.0)(x, y)
    on, off = 1 - eps + eps / n, eps / n  # timm's smoothed one-hot: 0.925 and 0.025
    expected = torch.tensor([[on, off, off, off], [off, off, on, off], [off, off, on, off], [off, off, off, on]])
    assert_close(y_none, expected, 1e-7, 0, "smoothed one-hot")


def test_label_width_is_constant_across_batches():
    mixer = MixUp(num_classes=100, generator=_gen())
    g = _gen(7)
    for _ in range(5):
        y = torch.randint(0, 10, (16,), generator=g)  # y.max()+1 would say 10 or fewer
        _, y_mix = mixer(torch.rand(16, 3, 8, 8, generator=g), y)
        assert y_mix.shape == (16, 100)
    with pytest.raises(ValueError, match=r"MixUp: num_classes is required without a teacher"):
        MixUp()
    with pytest.raises(ValueError, match=r"CutMix: num_classes is required without a teacher"):
        create_mixer("cutmix", k=2)


# ------------------------------------------------------------------------------------ prob ----
def test_prob_zero_returns_the_batch_unchanged(teacher, batch):
    x, y = batch
    for mixer in (MixUp(num_classes=10, prob=0.0), CutMix(num_classes=10, prob=0.0),
                  SuperMix(teacher, prob=0.0)):
        x_mix, y_mix = mixer(x, y)
        assert torch.equal(x_mix, x), mixer.name
        assert torch.equal(y_mix, F.one_hot(y, 10).float()), mixer.name
        assert mixer.last_result is None and mixer.last_index.numel() == 0


def test_prob_per_batch():
    x, y = _random_batch(B=6), torch.arange(6)
    mixer = MixUp(num_classes=6, prob=0.5, generator=_gen(11))
    mixed = 0
    for _ in range(16):
        x_mix, y_mix = mixer(x, y)
        if mixer.last_result is None:
            assert torch.equal(x_mix, x) and torch.equal(y_mix, F.one_hot(y, 6).float())
        else:
            assert torch.equal(mixer.last_index, torch.arange(6))
            assert not torch.equal(x_mix, x)
            mixed += 1
    assert 0 < mixed < 16, mixed


@pytest.mark.parametrize("which", ["mixup", "supermix"])
def test_prob_per_sample(which, teacher, batch):
    x, y = batch
    if which == "mixup":
        mixer = MixUp(num_classes=10, prob=0.5, mode="elem", generator=_gen(12))
    else:
        mixer = SuperMix(teacher, prob=0.5, mode="elem", max_iters=3, generator=_gen(12))
    x_mix, y_mix = mixer(x, y)
    rows = mixer.last_index
    assert 0 < rows.numel() < x.shape[0]
    rest = torch.ones(x.shape[0], dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(x_mix[rest], x[rest])
    assert torch.equal(y_mix[rest], F.one_hot(y[rest], 10).float())
    assert torch.equal(x_mix[rows], mixer.last_result.mixed)
    # Sources index the mixed rows' own images, so the mix is made of selected images only.
    res = mixer.last_result
    masks = res.weights.view(*res.weights.shape, 1, 1) if which == "mixup" else res.masks()
    rebuilt = (masks.unsqueeze(2) * x[rows[res.sources]]).sum(dim=1)
    assert_close(rebuilt, x_mix[rows], 1e-5, 1e-5, "mixed rows from their sources")


# -------------------------------------------------------------------------------- SuperMix ----
@pytest.mark.parametrize("on_failure", ["drop", "retry", "keep"])
def test_supermix_default_label_is_what_the_teacher_sees(on_failure, teacher, batch):
    x, y = batch
    mixer = SuperMix(teacher, on_failure=on_failure, **FEW_ITERS, generator=_gen(0))
    x_mix, y_mix = mixer(x, y)
    seen = _teacher_view(teacher, x_mix)
    assert torch.equal(y_mix.argmax(dim=1), seen.argmax(dim=1))
    assert_close(y_mix, seen, 1e-5, 1e-4, f"y_mix vs teacher on x_mix ({on_failure})")
    first = supermix.solve(teacher, x, **FEW_ITERS, generator=_gen(0))
    assert not bool(first.success.all()), "no failures: on_failure is not exercised"


def test_supermix_keep_returns_the_solver_images(teacher, batch):
    x, y = batch
    mixer = SuperMix(teacher, on_failure="keep", generator=_gen(1), **FEW_ITERS)
    x_mix, _ = mixer(x, y)
    ref = supermix.solve(teacher, x, **FEW_ITERS, generator=_gen(1))
    assert torch.equal(x_mix, ref.mixed)
    assert torch.equal(mixer.last_result.success, ref.success)
    assert torch.equal(mixer.last_result.iters, ref.iters)


def test_supermix_drop_replaces_failures_with_a_blind_mix(teacher, batch):
    x, y = batch
    mixer = SuperMix(teacher, generator=_gen(2), **FEW_ITERS)  # on_failure="drop" is the default
    x_mix, y_mix = mixer(x, y)
    ref = supermix.solve(teacher, x, **FEW_ITERS, generator=_gen(2))
    ok = ref.success
    assert 0 < int(ok.sum()) < x.shape[0]
    assert torch.equal(x_mix[ok], ref.mixed[ok])
    blind = (ref.weights[~ok].view(-1, 2, 1, 1, 1) * x[ref.sources[~ok]]).sum(dim=1)
    assert_close(x_mix[~ok], blind, 1e-6, 1e-6, "failed rows are MixUp of the same sources and r")
    assert torch.equal(mixer.last_result.success, ok)
    assert_close(mixer.last_result.masks()[~ok].mean(dim=(2, 3)), ref.weights[~ok], 1e-5, 0, "masks of blind rows")
    assert_close(y_mix, _teacher_view(teacher, x_mix), 1e-5, 1e-4, "labels")


def test_supermix_retry_solves_failures_again(teacher, batch):
    x, y = batch
    mixer = SuperMix(teacher, on_failure="retry", generator=_gen(2), **FEW_ITERS)
    x_mix, _ = mixer(x, y)
    ref = supermix.solve(teacher, x, **FEW_ITERS, generator=_gen(2))
    res = mixer.last_result
    assert torch.equal(x_mix[ref.success], ref.mixed[ref.success])
    assert torch.equal(res.sources[:, 0], ref.sources[:, 0]), "each sample keeps its first source"
    retried = ~ref.success
    assert int(res.success.sum()) > int(ref.success.sum()), "the retry solved none"
    assert not torch.equal(res.sources[retried], ref.sources[retried])
    rebuilt = (res.masks().unsqueeze(2) * x[res.sources]).sum(dim=1)
    assert_close(rebuilt, x_mix, 1e-5, 1e-5, "x_mix from last_result's sources and masks")


@pytest.mark.parametrize("label", ["teacher", "target"])
def test_supermix_target_label_by_name(label, teacher, batch):
    x, y = batch
    mixer = SuperMix(teacher, label=label, on_failure="keep", generator=_gen(3), **FEW_ITERS)
    _, y_mix = mixer(x, y)
    ref = supermix.solve(teacher, x, generator=_gen(3), **FEW_ITERS)
    if label == "target":
        assert_close(y_mix, hand_mixed_labels(ref.sources, ref.weights, y, 10), 1e-6, 0, "target labels")
    else:
        assert_close(y_mix, ref.probs, 1e-6, 0, "teacher labels")


def test_min_iters_goes_to_the_solver(teacher, batch):
    x, y = batch
    free = SuperMix(teacher, generator=_gen(4), **FEW_ITERS)
    free(x, y)
    assert int((free.last_result.iters == 0).sum()) > 0, "no sample stopped at once: the check is vacuous"
    forced = SuperMix(teacher, min_iters=2, generator=_gen(4), **FEW_ITERS)
    forced(x, y)
    assert int(forced.last_result.iters.min()) >= 2


def test_num_classes_must_match_the_teacher(teacher, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"SuperMix: num_classes=12 but the teacher returns 10 classes"):
        SuperMix(teacher, num_classes=12)(x, y)
    _, y_mix = SuperMix(teacher, num_classes=10, prob=0.0)(x, y)
    assert y_mix.shape == (32, 10)


def test_offline_form_is_the_solver_result(teacher, batch):
    x, _ = batch
    result = SuperMix(teacher, on_failure="retry", **FEW_ITERS).mix_batch(x, _gen(5))
    ref = supermix.solve(teacher, x, **FEW_ITERS, generator=_gen(5))
    assert isinstance(result, supermix.MixResult)
    assert torch.equal(result.mixed, ref.mixed) and torch.equal(result.success, ref.success)
    blind = MixUp(teacher=teacher).mix_batch(x, _gen(5))
    assert blind.probs.shape == (32, 10) and blind.labels.shape == (32,)


# ---------------------------------------------------------------------------------- checks ----
_B = 6


@pytest.mark.parametrize(
    "y,error,message",
    [
        (torch.zeros(_B + 1, dtype=torch.long), ValueError, r"MixUp: y must be \[B=6\] class labels .* got shape \[7\]"),
        (torch.zeros(_B - 1, dtype=torch.long), ValueError, r"MixUp: y must be \[B=6\] class labels .* got shape \[5\]"),
        (torch.tensor([0, 1, 2, 3, 4, 5]), ValueError, r"y class labels must be in \[0, num_classes=5\), got values in \[0, 5\]"),
        (torch.tensor([0, -1, 2, 3, 4, 0]), ValueError, r"y class labels must be in \[0, num_classes=5\), got values in \[-1, 4\]"),
        (torch.full((_B, 4), 0.25), ValueError, r"y soft labels must be \[B, num_classes=5\], got width 4"),
        (torch.zeros(_B), TypeError, r"y \[B\] must hold int class labels, got dtype torch.float32"),
        ([0, 1, 2, 3, 4, 0], TypeError, r"y must be a tensor .* got list"),
    ],
    ids=["B+1", "B-1", "too-high", "negative", "width", "float", "list"],
)
def test_bad_labels_are_named(y, error, message):
    with pytest.raises(error, match=message):
        MixUp(num_classes=5)(_random_batch(B=_B), y)


def test_bad_inputs_are_named():
    mixer = MixUp(num_classes=5)
    with pytest.raises(ValueError, match=r"MixUp: x must be a float tensor \[B,C,H,W\]"):
        mixer(torch.zeros(6, 8, 8), torch.zeros(6, dtype=torch.long))
    with pytest.raises(TypeError, match=r"call as mixer\(x, y\) or mixer\(\(x, y\)\), got 3 input"):
        mixer(_random_batch(), torch.zeros(6, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"k=3 sources need a batch of at least k images, got B=2"):
        MixUp(k=3, num_classes=5)(_random_batch(B=2), torch.zeros(2, dtype=torch.long))


def test_unknown_options_are_refused_at_construction(teacher):
    with pytest.raises(TypeError, match=r"SuperMix: unknown option\(s\) \['lamda_s'\]; valid options: .*'lambda_s'.*'min_iters'"):
        SuperMix(teacher, lamda_s=25.0)
    with pytest.raises(TypeError, match=r"SuperMix: unknown option\(s\) \['sources'\]"):
        SuperMix(teacher, sources=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"MixUp: unknown option\(s\) \['mixup_alpha'\]; valid options: \['alpha',"):
        MixUp(num_classes=10, mixup_alpha=0.2)
    with pytest.raises(TypeError, match=r"CutMix: unknown option\(s\) \['lambda_s'\]"):
        create_mixer("cutmix", teacher=teacher, lambda_s=25.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(label="hard"), r"label must be one of \('teacher', 'target'\), got 'hard'"),
        (dict(on_failure="skip"), r"on_failure must be one of \('drop', 'retry', 'keep'\), got 'skip'"),
        (dict(prob=1.5), r"prob must be a finite number in \[0, 1\], got 1.5"),
        (dict(mode="pair"), r"mode must be one of \('batch', 'elem'\), got 'pair'"),
        (dict(label_smoothing=1.0), r"label_smoothing must be a finite number in \[0, 1\), got 1.0"),
        (dict(k=1), r"k must be an int >= 2, got 1"),
    ],
)
def test_bad_option_values_are_named(kwargs, message, teacher):
    with pytest.raises(ValueError, match="SuperMix: " + message):
        SuperMix(teacher, **kwargs)


# ------------------------------------------------------------------------ training loops ----
def test_soft_target_cross_entropy_matches_torch():
    g = _gen(8)
    logits = torch.randn(5, 7, generator=g)
    target = torch.rand(5, 7, generator=g).softmax(dim=1)
    assert_close(supermix.soft_target_cross_entropy(logits, target), F.cross_entropy(logits, target), 1e-6, 1e-6, "mean")
    assert_close(supermix.soft_target_cross_entropy(logits, target, reduction="none"),
                 F.cross_entropy(logits, target, reduction="none"), 1e-6, 1e-6, "none")
    labels = torch.tensor([0, 6, 3, 3, 1])
    assert_close(supermix.soft_target_cross_entropy(logits, F.one_hot(labels, 7).float()),
                 F.cross_entropy(logits, labels), 1e-6, 1e-6, "one-hot")
    with pytest.raises(TypeError, match=r"target must be float soft labels"):
        supermix.soft_target_cross_entropy(logits, labels)
    with pytest.raises(ValueError, match=r"target must have the logits' shape \[5, 7\], got \[5, 6\]"):
        supermix.soft_target_cross_entropy(logits, target[:, :6])


def _student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def test_timm_style_training_loop(teacher):
    _, images, labels = _teacher_and_images()
    model = _student()
    model(images[:2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mixers = [SuperMix(teacher, max_iters=3, label_smoothing=0.1, generator=_gen()),
              MixUp(num_classes=10, alpha=1.0, prob=0.5, generator=_gen()),
              CutMix(num_classes=10, alpha=1.0, generator=_gen())]
    before = [p.detach().clone() for p in model.parameters()]
    for step, mixer in enumerate(mixers):
        x, y = images[16 * step:16 * step + 16], labels[16 * step:16 * step + 16]
        x_mix, y_mix = mixer(x, y)
        loss = supermix.soft_target_cross_entropy(model(x_mix), y_mix)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), mixer.name
        assert_close(y_mix.sum(dim=1), torch.ones(16), 1e-5, 0, f"{mixer.name} rows sum to 1")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_torchvision_v2_composition(teacher):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    _, images, labels = _teacher_and_images()
    x, y = images[:16], labels[:16]
    ours = SuperMix(teacher, max_iters=2, generator=_gen())
    mixup = MixUp(num_classes=10, generator=_gen())
    choice = v2.RandomChoice([ours, v2.CutMix(num_classes=10), mixup])
    torch.manual_seed(0)
    for _ in range(8):
        x_mix, y_mix = choice(x, y)
        assert x_mix.shape == x.shape and y_mix.shape == (16, 10) and y_mix.dtype == torch.float32
        assert_close(y_mix.sum(dim=1), torch.ones(16), 1e-5, 0, "rows sum to 1")
        x_mix, y_mix = v2.Compose([choice])(x, y)
        assert y_mix.shape == (16, 10)
    assert ours.last_result is not None and mixup.last_result is not None, "a mixer was never chosen"


def test_tuple_input_and_module_form(teacher, batch):
    x, y = batch
    a = MixUp(num_classes=10, generator=_gen(9))
    b = MixUp(num_classes=10, generator=_gen(9))
    out = a((x, y))
    assert isinstance(out, tuple) and len(out) == 2
    x2, y2 = b(x, y)
    assert torch.equal(out[0], x2) and torch.equal(out[1], y2)
    mixer = SuperMix(teacher)
    assert isinstance(mixer, nn.Module)
    assert mixer.state_dict() == {} and list(mixer.children()) == [], "the teacher is held, not owned"
    teacher.train()
    mixer.eval()
    assert teacher.training, "mixer.eval() must not touch the teacher"
    teacher.eval()
