"""The mixers' contract (``x_mix, y_mix = mixer(x, y)``) on a tiny teacher, fast enough to run
under mutation testing (scripts/mutation.sh mixers); tests/test_mixers.py checks the same
contract on the shipped ResNet-20.

The expectations are built here, not with the mixers' own bookkeeping: images as weighted sums of
their sources by loops over the batch, CutMix boxes painted pixel by pixel from the random draws
replayed on a copy of the generator (the draws come from ``supermix.solver``'s samplers, which are
not what is checked here), labels as sum_i r_i y_i by loops, teacher labels by running the teacher,
SuperMix's ``on_failure`` handling by replaying ``supermix.solve`` and the retry by hand.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import supermix
from supermix.mixers import (LABELS, MIXERS, MODES, ON_FAILURE, SOLVE_OPTIONS, CutMix, MixUp, SuperMix,
                             create_mixer)
from supermix.solver import SolveStats, cyclic_sources, sample_dirichlet
from testing import assert_close, hand_mixed_labels

B, CLASSES, SIZE = 8, 4, (8, 8)
SOLVE = dict(method="newton_sp", mask_size=4)  # the solver's settings for the SuperMix checks


class TinyTeacher(nn.Module):
    """A fixed two-layer tanh network on 1x8x8 images, 4 classes; it records the mode it ran in
    and the batch sizes it saw."""

    def __init__(self, seed: int = 0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(SIZE[0] * SIZE[1], 12, dtype=dtype)
        self.fc = nn.Linear(12, CLASSES, dtype=dtype)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(12, SIZE[0] * SIZE[1], generator=g) * 0.5)
            self.hidden.bias.zero_()
            self.fc.weight.copy_(torch.randn(CLASSES, 12, generator=g))
            self.fc.bias.copy_(torch.randn(CLASSES, generator=g) * 0.1)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training))
        return self.fc(torch.tanh(self.hidden(x.flatten(1).to(self.fc.weight.dtype))))


def images(seed: int = 1, n: int = B, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, 1, *SIZE, generator=gen(seed)).to(dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def copy_of(g: torch.Generator) -> torch.Generator:
    """A generator in the state ``g`` is in now: it replays the draws ``g`` will make."""
    other = torch.Generator()
    other.set_state(g.get_state())
    return other


# ------------------------------------------------------------------------------- oracles ----
def seen(teacher, x) -> torch.Tensor:
    """The teacher's softmax on x, computed here (eval mode, no grad)."""
    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        out = F.softmax(teacher(x).float(), dim=1)
    teacher.train(was)
    return out


def one_hot(y, n) -> torch.Tensor:
    out = torch.zeros(len(y), n)
    for b, c in enumerate(y.tolist()):
        out[b, c] = 1.0
    return out


def blend(x, sources, weights) -> torch.Tensor:
    """sum_i w_i x[s_i] row by row, in float64."""
    out = torch.zeros(sources.shape[0], *x.shape[1:], dtype=torch.float64)
    for b in range(sources.shape[0]):
        for i in range(sources.shape[1]):
            out[b] += float(weights[b, i]) * x[int(sources[b, i])].double()
    return out


def soft(n_rows, n=CLASSES, seed=3, dtype=torch.float32):
    return (3 * torch.rand(n_rows, n, generator=gen(seed))).softmax(dim=1).to(dtype)


def int_labels(n_rows=B, seed=4):
    return torch.randint(0, CLASSES, (n_rows,), generator=gen(seed))


def cutmix_oracle(x, k, alpha, g):
    """CutMix's sources, sampled r and pixel owners, replayed from generator ``g``: sources, then
    r, then for each i >= 1 a centre (row, column) per sample; the box of source i is
    round(sqrt(r_i) H) x round(sqrt(r_i) W), rows [cy - h//2, cy - h//2 + h) (and the same for
    columns) clipped at the border, painted over the earlier boxes."""
    n, _, H, W = x.shape
    sources = cyclic_sources(n, k, g)
    r = sample_dirichlet(n, k, alpha, g)
    owner = torch.zeros(n, H, W, dtype=torch.long)
    for i in range(1, k):
        cys = torch.randint(0, H, (n, 1, 1), generator=g).flatten().tolist()
        cxs = torch.randint(0, W, (n, 1, 1), generator=g).flatten().tolist()
        for b in range(n):
            side = float(r[b, i]) ** 0.5
            h, w = int(torch.tensor(side * H).round()), int(torch.tensor(side * W).round())
            top, left = cys[b] - h // 2, cxs[b] - w // 2
            for row in range(max(top, 0), min(top + h, H)):
                for col in range(max(left, 0), min(left + w, W)):
                    owner[b, row, col] = i
    masks = torch.zeros(n, k, H, W)
    for i in range(k):
        masks[:, i] = (owner == i).float()
    return sources, r, masks


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# ------------------------------------------------------------------------------------ MixUp ----
@pytest.mark.parametrize("k", [2, 3])
def test_mixup_blends_its_sources_with_the_drawn_weights(k):
    x = images()
    g = gen(5)
    replay = copy_of(g)
    mixer = MixUp(k=k, alpha=0.7, num_classes=CLASSES, generator=g)
    x_mix, y_mix = mixer(x, int_labels())
    res = mixer.last_result
    # Drawn from the mixer's generator: k sources per row, then the weights r ~ Dirichlet(alpha).
    assert torch.equal(res.sources, cyclic_sources(B, k, replay))
    assert torch.equal(res.weights, sample_dirichlet(B, k, 0.7, replay))
    assert_close(x_mix, blend(x, res.sources, res.weights), 1e-6, 1e-6, "x_mix = sum_i r_i x_i")
    assert x_mix.dtype == torch.float32 and y_mix.dtype == torch.float32
    assert torch.equal(mixer.last_index, torch.arange(B))
    assert torch.equal(x, images()), "the input batch is left alone"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("labels", ["int", "int32", "uint8", "soft", "soft64"])
def test_mixup_target_labels_are_the_weighted_labels(k, labels):
    x = images()
    y = {"int": int_labels(), "int32": int_labels().int(), "uint8": int_labels().to(torch.uint8),
         "soft": soft(B), "soft64": soft(B, dtype=torch.float64)}[labels]
    mixer = MixUp(k=k, num_classes=CLASSES, generator=gen(6))
    assert mixer.label == "target"
    _, y_mix = mixer(x, y)
    res = mixer.last_result
    assert y_mix.dtype == torch.float32 and y_mix.shape == (B, CLASSES)
    assert_close(y_mix, hand_mixed_labels(res.sources, res.weights, y, CLASSES), 1e-6, 1e-6, "sum_i r_i y_i")


def test_mixup_alpha_shapes_the_weights():
    x = images(n=64)
    y = torch.zeros(64, dtype=torch.long)
    flat = MixUp(alpha=200.0, num_classes=CLASSES, generator=gen(7))
    flat(x, y)
    assert float((flat.last_result.weights - 0.5).abs().max()) < 0.15
    peaked = MixUp(alpha=0.02, num_classes=CLASSES, generator=gen(7))
    peaked(x, y)
    assert float((peaked.last_result.weights.max(dim=1).values > 0.9).float().mean()) > 0.9


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_blind_mixers_label_by_the_teacher_when_given_one(cls):
    teacher, x, y = TinyTeacher(), images(), int_labels()
    mixer = cls(teacher=teacher, k=3, generator=gen(8))
    assert mixer.label == "teacher"
    x_mix, y_mix = mixer(x, y)
    assert_close(y_mix, seen(teacher, x_mix), 1e-6, 1e-6, "teacher softmax on x_mix")
    assert y_mix.dtype == torch.float32 and not y_mix.requires_grad
    target = cls(teacher=teacher, k=3, label="target", generator=gen(8))
    x_t, y_t = target(x, y)
    assert torch.equal(x_t, x_mix), "the same draws"
    res = target.last_result
    assert res.probs is None
    assert_close(y_t, hand_mixed_labels(res.sources, res.weights, y, CLASSES), 1e-6, 1e-6, "target labels")


def test_a_float64_teacher_gives_float32_labels():
    teacher, x = TinyTeacher(dtype=torch.float64), images(dtype=torch.float64)
    mixer = MixUp(teacher=teacher, generator=gen(9))
    x_mix, y_mix = mixer(x, int_labels())
    assert x_mix.dtype == torch.float64 and y_mix.dtype == torch.float32
    result = MixUp(teacher=teacher).mix_batch(x, gen(9))
    assert result.probs.dtype == torch.float32
    assert_close(result.probs, seen(teacher, result.mixed), 1e-6, 1e-6, "probs")


@pytest.mark.parametrize("cls", [MixUp, CutMix])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_images_keep_their_dtype(cls, dtype):
    x = images(dtype=dtype)
    x_mix, y_mix = cls(k=3, num_classes=CLASSES, generator=gen(10))(x, int_labels())
    assert x_mix.dtype == dtype and y_mix.dtype == torch.float32


# ----------------------------------------------------------------------------------- CutMix ----
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_cutmix_pastes_the_drawn_boxes(k, seed):
    x = torch.rand(B, 2, 12, 10, generator=gen(seed))
    g = gen(20 + seed)
    sources, r, masks = cutmix_oracle(x, k, 1.0, copy_of(g))
    mixer = CutMix(k=k, alpha=1.0, num_classes=CLASSES, generator=g)
    x_mix, _ = mixer(x, int_labels())
    res = mixer.last_result
    assert torch.equal(res.sources, sources)
    assert torch.equal(res.full_masks, masks) and res.full_masks.dtype == torch.float32
    assert torch.equal(res.masks(), masks)
    assert_close(res.weights, masks.mean(dim=(2, 3)), 1e-7, 0, "weights = covered fractions")
    expected = torch.zeros_like(x)
    for b in range(B):
        for i in range(k):
            expected[b] += masks[b, i] * x[int(sources[b, i])]
    assert torch.equal(x_mix, expected)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("labels", ["int", "soft"])
def test_cutmix_labels_are_the_covered_pixel_fractions_not_r(k, labels):
    x = torch.rand(B, 2, 12, 10, generator=gen(2))  # random pixels: a pixel matches one source only
    y = int_labels() if labels == "int" else soft(B)
    g = gen(30)
    _, r, _ = cutmix_oracle(x, k, 1.0, copy_of(g))
    mixer = CutMix(k=k, num_classes=CLASSES, generator=g)
    x_mix, y_mix = mixer(x, y)
    sources = mixer.last_result.sources
    owner = torch.stack([(x_mix == x[sources[:, i]]).all(dim=1) for i in range(k)], dim=1)
    assert bool((owner.sum(dim=1) == 1).all()), "every pixel comes from exactly one source"
    fractions = owner.double().mean(dim=(2, 3))
    assert_close(y_mix, hand_mixed_labels(sources, fractions, y, CLASSES), 1e-6, 1e-6, "labels = covered fractions")
    assert float((fractions - r.double()).abs().max()) > 0.05, "r and the covered fractions agree: vacuous"


def test_cutmix_box_at_the_corner_is_clipped():
    """A box drawn near the border covers less than r: the label follows the pixels."""
    x = torch.rand(64, 1, 8, 8, generator=gen(3))
    g = gen(31)
    _, r, masks = cutmix_oracle(x, 2, 1.0, copy_of(g))
    mixer = CutMix(num_classes=CLASSES, generator=g)
    mixer(x, torch.zeros(64, dtype=torch.long))
    covered = mixer.last_result.weights[:, 1]
    assert torch.equal(covered, masks[:, 1].mean(dim=(1, 2)))
    assert bool((covered < r[:, 1] - 0.1).any()), "no clipped box"


def test_cutmix_boxes_that_round_to_nothing_keep_k_weight_columns():
    """On 2x2 images a box of area r < 1/16 rounds to 0 x 0: when no sample gets a box, the
    background covers everything and the weights still have k columns (0 for source 1)."""
    x = torch.rand(4, 1, 2, 2, generator=gen(4))
    y = torch.tensor([0, 1, 2, 3])
    for seed in range(200):
        _, _, masks = cutmix_oracle(x, 2, 0.05, gen(seed))
        if not bool(masks[:, 1].any()):
            break
    else:
        raise AssertionError("no seed without boxes")
    mixer = CutMix(alpha=0.05, num_classes=CLASSES, generator=gen(seed))
    x_mix, y_mix = mixer(x, y)
    res = mixer.last_result
    assert res.weights.shape == (4, 2) and res.full_masks.shape == (4, 2, 2, 2)
    assert torch.equal(res.weights, torch.tensor([[1.0, 0.0]] * 4))
    assert torch.equal(x_mix, x[res.sources[:, 0]])
    assert torch.equal(y_mix, one_hot(y[res.sources[:, 0]], CLASSES))


# --------------------------------------------------------------------------- label smoothing ----
@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_label_smoothing_maps_every_row(cls):
    x, y, eps = images(), int_labels(), 0.2
    _, plain = cls(num_classes=CLASSES, generator=gen(11))(x, y)
    _, smooth = cls(num_classes=CLASSES, label_smoothing=eps, generator=gen(11))(x, y)
    assert_close(smooth, (1 - eps) * plain + eps / CLASSES, 1e-7, 1e-7, "smoothed mix")
    _, unmixed = cls(num_classes=CLASSES, label_smoothing=eps, prob=0.0)(x, y)
    assert_close(unmixed, (1 - eps) * one_hot(y, CLASSES) + eps / CLASSES, 1e-7, 1e-7, "smoothed one-hot")
    assert_close(unmixed.sum(dim=1), torch.ones(B), 1e-6, 0, "rows sum to 1")


def test_label_smoothing_uses_the_teacher_width():
    teacher, x, eps = TinyTeacher(), images(), 0.1
    _, y_mix = MixUp(teacher=teacher, label_smoothing=eps, prob=0.0)(x, int_labels())
    assert_close(y_mix, (1 - eps) * one_hot(int_labels(), CLASSES) + eps / CLASSES, 1e-7, 1e-7, "width 4")


# -------------------------------------------------------------------------------- prob/mode ----
def test_prob_one_mixes_everything_without_an_extra_draw():
    x, y = images(), int_labels()
    for mode in MODES:
        mixer = MixUp(num_classes=CLASSES, mode=mode, generator=gen(12))
        x_mix, _ = mixer(x, y)
        assert torch.equal(x_mix, MixUp(num_classes=CLASSES).mix_batch(x, gen(12)).mixed), mode
        assert torch.equal(mixer.last_index, torch.arange(B))


@pytest.mark.parametrize("mode", MODES)
def test_prob_zero_leaves_the_batch_and_the_generator_alone(mode):
    x = images()
    for y, expected in ((int_labels(), one_hot(int_labels(), CLASSES)), (soft(B, dtype=torch.float64), soft(B))):
        g = gen(13)
        state = g.get_state()
        mixer = MixUp(num_classes=CLASSES, prob=0.0, mode=mode, generator=g)
        x_mix, y_mix = mixer(x, y)
        assert torch.equal(x_mix, x)
        assert y_mix.dtype == torch.float32
        assert_close(y_mix, expected, 1e-7, 0, "own labels")
        assert mixer.last_result is None and mixer.last_index.numel() == 0
        assert mixer.last_index.dtype == torch.long
        assert torch.equal(g.get_state(), state), "no random draw"


def test_prob_per_batch_follows_one_uniform_draw():
    x, y = images(), int_labels()
    g = gen(14)
    mixer = MixUp(num_classes=CLASSES, prob=0.4, generator=g)
    outcomes = []
    for _ in range(20):
        draw = float(torch.rand((), generator=copy_of(g)))
        x_mix, y_mix = mixer(x, y)
        mixed = draw < 0.4
        outcomes.append(mixed)
        if mixed:
            assert torch.equal(mixer.last_index, torch.arange(B))
            res = mixer.last_result
            assert_close(x_mix, blend(x, res.sources, res.weights), 1e-6, 1e-6, "mixed batch")
        else:
            assert mixer.last_result is None and mixer.last_index.numel() == 0
            assert torch.equal(x_mix, x) and torch.equal(y_mix, one_hot(y, CLASSES))
    assert 0 < sum(outcomes) < 20


@pytest.mark.parametrize("labels", ["int", "soft"])
def test_prob_per_sample_mixes_the_drawn_rows_among_themselves(labels):
    x = images(n=12)
    y = int_labels(12) if labels == "int" else soft(12)
    own = one_hot(y, CLASSES) if labels == "int" else y
    g = gen(15)
    mixer = MixUp(k=3, num_classes=CLASSES, prob=0.5, mode="elem", generator=g)
    for _ in range(3):
        rows = (torch.rand(12, generator=copy_of(g)) < 0.5).nonzero().flatten()
        x_mix, y_mix = mixer(x, y)
        assert torch.equal(mixer.last_index, rows)
        rest = torch.ones(12, dtype=torch.bool)
        rest[rows] = False
        assert torch.equal(x_mix[rest], x[rest]) and torch.equal(y_mix[rest], own[rest])
        res = mixer.last_result
        assert res.sources.shape == (len(rows), 3)
        # sources index the selected rows: the mix is made of selected images only.
        assert_close(x_mix[rows], blend(x[rows], res.sources, res.weights), 1e-6, 1e-6, "mixed rows")
        assert_close(y_mix[rows], hand_mixed_labels(res.sources, res.weights, y[rows], CLASSES), 1e-6, 1e-6, "labels")
        assert torch.equal(x, images(n=12)), "the input batch is left alone"


def _seed_selecting(n, k, prob, wanted):
    """A generator seed whose per-sample draw selects ``wanted`` of ``n`` rows."""
    for seed in range(1000):
        if int((torch.rand(n, generator=gen(seed)) < prob).sum()) == wanted:
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("selected", [1, 2, 3])
def test_fewer_selected_rows_than_k_are_left_unmixed(selected):
    x, y, k = images(), int_labels(), 3
    seed = _seed_selecting(B, k, 0.3, selected)
    mixer = MixUp(k=k, num_classes=CLASSES, prob=0.3, mode="elem", generator=gen(seed))
    x_mix, y_mix = mixer(x, y)
    if selected < k:
        assert mixer.last_result is None
        assert mixer.last_index.numel() == 0 and mixer.last_index.dtype == torch.long
        assert torch.equal(x_mix, x) and torch.equal(y_mix, one_hot(y, CLASSES))
    else:
        assert mixer.last_result is not None and mixer.last_index.numel() == k
        assert not torch.equal(x_mix, x)


def test_small_and_empty_batches():
    mixer = MixUp(k=3, num_classes=CLASSES, prob=0.5, mode="elem", generator=gen(16))
    for n in (0, 1, 2):
        x_mix, y_mix = mixer(images(n=n), int_labels(n))
        assert torch.equal(x_mix, images(n=n)) and y_mix.shape == (n, CLASSES)
        assert mixer.last_result is None
    with pytest.raises(ValueError, match=exact("MixUp: k=3 sources need a batch of at least k images, got B=2")):
        MixUp(k=3, num_classes=CLASSES)(images(n=2), int_labels(2))
    x_mix, _ = MixUp(k=3, num_classes=CLASSES, generator=gen(16))(images(n=3), int_labels(3))  # B = k
    assert not torch.equal(x_mix, images(n=3))


def test_last_result_describes_the_last_call():
    x, y = images(), int_labels()
    mixer = MixUp(num_classes=CLASSES, prob=0.5, generator=gen(17))
    states = []
    for _ in range(8):
        mixer(x, y)
        states.append(mixer.last_result is not None)
        if mixer.last_result is None:
            assert mixer.last_index.numel() == 0
    assert True in states and False in states, "the same outcome every time: vacuous"


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_blind_results_are_complete(cls):
    mixer = cls(k=3, num_classes=CLASSES, generator=gen(18))
    x_mix, _ = mixer(images(), int_labels())
    res = mixer.last_result
    assert torch.equal(res.mixed, x_mix)
    assert res.mask_logits is None and res.probs is None and res.labels is None
    assert res.targets is res.weights
    assert res.iters.dtype == torch.long and torch.equal(res.iters, torch.zeros(B, dtype=torch.long))
    assert res.success.dtype == torch.bool and bool(res.success.all()) and res.success.shape == (B,)
    assert res.stats == SolveStats()
    assert (res.full_masks is None) == (cls is MixUp)
    assert_close(res.weights.sum(dim=1), torch.ones(B), 1e-6, 0, "weights sum to 1")


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_offline_form_labels_with_the_teacher(cls):
    teacher, x = TinyTeacher(), images()
    result = cls(teacher=teacher, k=3).mix_batch(x, gen(19))
    assert_close(result.probs, seen(teacher, result.mixed), 1e-6, 1e-6, "probs on the mixed images")
    labels = seen(teacher, x).argmax(dim=1)
    assert torch.equal(result.labels, labels)
    targets = torch.zeros(B, CLASSES)
    for b in range(B):
        for i in range(3):
            targets[b, int(labels[result.sources[b, i]])] += float(result.weights[b, i])
    assert_close(result.targets, targets, 1e-6, 0, "targets: r on the teacher's labels of the sources")
    blind = cls(k=3, num_classes=CLASSES).mix_batch(x, gen(19))
    assert blind.probs is None and blind.labels is None and torch.equal(blind.mixed, result.mixed)
    with pytest.raises(ValueError, match=exact(f"{cls.name}: k=3 sources need a batch of at least k images, got B=2")):
        cls(k=3, num_classes=CLASSES).mix_batch(images(n=2))
    three = cls(k=3, num_classes=CLASSES).mix_batch(images(n=3), gen(19))  # B = k
    assert three.sources.shape == (3, 3) and three.mixed.shape == (3, 1, *SIZE)
    with pytest.raises(ValueError, match=f"^{cls.name}: x must be a float tensor"):
        cls(k=3, num_classes=CLASSES).mix_batch(images()[0])


# ------------------------------------------------------------------------------- the teacher ----
def test_the_teacher_is_held_not_owned_and_run_in_eval_mode():
    teacher = TinyTeacher()
    for mixer in (MixUp(teacher=teacher, generator=gen()), CutMix(teacher=teacher, generator=gen()),
                  SuperMix(teacher, generator=gen(), max_iters=2, **SOLVE)):
        assert mixer.teacher is teacher
        assert mixer.state_dict() == {} and list(mixer.children()) == [], mixer.name
        teacher.train()
        mixer.eval()
        assert teacher.training, "mixer.eval() must not touch the teacher"
        teacher.calls.clear()
        _, y_mix = mixer(images(), int_labels())
        assert teacher.calls and not any(training for _, training in teacher.calls), "run in eval mode"
        assert teacher.training, "the teacher's mode is given back"
        assert not y_mix.requires_grad
    teacher.eval()


def test_the_label_width_comes_from_one_image_once():
    teacher = TinyTeacher()
    mixer = MixUp(teacher=teacher, label="target", generator=gen())
    assert mixer.label == "target"
    _, y_mix = mixer(images(), int_labels())
    assert teacher.calls == [(1, False)] and y_mix.shape == (B, CLASSES)
    mixer(images(), int_labels())
    assert teacher.calls == [(1, False)], "asked once"
    with pytest.raises(ValueError, match=exact("MixUp: num_classes=5 but the teacher returns 4 classes")):
        MixUp(teacher=teacher, num_classes=5)(images(), int_labels())
    _, y_mix = MixUp(teacher=teacher, num_classes=CLASSES, prob=0.0)(images(), int_labels())
    assert y_mix.shape == (B, CLASSES)


def test_without_a_teacher_the_width_is_num_classes():
    _, y_mix = MixUp(num_classes=7, generator=gen())(images(), int_labels())
    assert y_mix.shape == (B, 7)
    with pytest.raises(ValueError, match=r"y class labels must be in \[0, num_classes=3\)"):
        MixUp(num_classes=3)(images(), torch.full((B,), 3))


class NaNTeacher(nn.Module):
    """Finite logits on one image (the width check), non-finite in class 0 on larger batches."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], CLASSES)
        if x.shape[0] > 1:
            out[:, 0] = float("nan")
        return out


def test_non_finite_teacher_logits_are_named():
    message = ("MixUp: the teacher returned non-finite logits (NaN or inf) on 8 of 8 images; "
               "check its weights and the input normalisation")
    with pytest.raises(FloatingPointError, match=exact(message)):
        MixUp(teacher=NaNTeacher(), generator=gen())(images(), int_labels())
    with pytest.raises(FloatingPointError, match=exact(message.replace("MixUp", "CutMix"))):
        CutMix(teacher=NaNTeacher()).mix_batch(images(), gen())


# --------------------------------------------------------------------------------- SuperMix ----
def test_supermix_offline_form_is_the_solver():
    teacher, x = TinyTeacher(), images()
    mixer = SuperMix(teacher, k=3, alpha=0.5, max_iters=2, **SOLVE)
    result = mixer.mix_batch(x, gen(40))
    ref = supermix.solve(teacher, x, k=3, alpha=0.5, max_iters=2, generator=gen(40), **SOLVE)
    for name in ("mixed", "mask_logits", "sources", "weights", "targets", "probs", "iters", "success"):
        assert torch.equal(getattr(result, name), getattr(ref, name)), name
    with pytest.raises(ValueError, match="^SuperMix: x must be a float tensor"):
        mixer.mix_batch(images().int())


@pytest.mark.parametrize("label", LABELS)
def test_supermix_keep_returns_the_solver_result(label):
    teacher, x, y = TinyTeacher(), images(), int_labels()
    mixer = SuperMix(teacher, label=label, on_failure="keep", max_iters=1, generator=gen(41), **SOLVE)
    x_mix, y_mix = mixer(x, y)
    ref = supermix.solve(teacher, x, max_iters=1, generator=gen(41), **SOLVE)
    assert not bool(ref.success.all()), "no failure: vacuous"
    assert torch.equal(x_mix, ref.mixed) and torch.equal(mixer.last_result.success, ref.success)
    assert torch.equal(mixer.last_result.mask_logits, ref.mask_logits)
    if label == "teacher":
        assert_close(y_mix, seen(teacher, x_mix), 1e-6, 1e-6, "teacher labels")
    else:
        assert_close(y_mix, hand_mixed_labels(ref.sources, ref.weights, y, CLASSES), 1e-6, 1e-6, "target labels")


@pytest.mark.parametrize("label", LABELS)
def test_supermix_drop_replaces_failures_with_a_blind_mix(label):
    teacher, x, y = TinyTeacher(), images(), int_labels()
    mixer = SuperMix(teacher, label=label, max_iters=1, generator=gen(42), **SOLVE)  # on_failure="drop"
    assert mixer.on_failure == "drop"
    x_mix, y_mix = mixer(x, y)
    ref = supermix.solve(teacher, x, max_iters=1, generator=gen(42), **SOLVE)
    ok = ref.success
    assert 0 < int(ok.sum()) < B
    res = mixer.last_result
    assert torch.equal(res.success, ok) and torch.equal(res.sources, ref.sources)
    assert torch.equal(res.weights, ref.weights) and torch.equal(res.iters, ref.iters)
    assert torch.equal(x_mix[ok], ref.mixed[ok]) and torch.equal(res.mask_logits[ok], ref.mask_logits[ok])
    assert_close(x_mix[~ok], blend(x, ref.sources[~ok], ref.weights[~ok]), 1e-6, 1e-6, "blind MixUp of the failed")
    assert torch.equal(res.mixed, x_mix)
    assert_close(res.probs, seen(teacher, x_mix), 1e-6, 1e-6, "probs describe the returned images")
    # The blind rows' masks are r everywhere.
    masks = res.masks()[~ok]
    assert_close(masks, ref.weights[~ok].view(-1, 2, 1, 1).expand_as(masks), 1e-5, 1e-5, "masks of blind rows")
    if label == "teacher":
        assert_close(y_mix, seen(teacher, x_mix), 1e-6, 1e-6, "teacher labels")
    else:
        assert_close(y_mix, hand_mixed_labels(ref.sources, ref.weights, y, CLASSES), 1e-6, 1e-6, "target labels")


def test_supermix_drop_with_extreme_weights_keeps_finite_mask_logits():
    teacher, x = TinyTeacher(), images(n=32)
    mixer = SuperMix(teacher, alpha=0.01, max_iters=0, generator=gen(43), **SOLVE)
    mixer(x, int_labels(32))
    res = mixer.last_result
    failed = ~res.success
    assert bool(failed.any()), "no failure: vacuous"
    assert bool(((res.weights[failed] == 0) | (res.weights[failed] == 1)).any()), "no extreme weight: vacuous"
    assert bool(torch.isfinite(res.mask_logits).all())
    r = res.weights[failed].clamp(1e-6, 1 - 1e-6)
    logits = torch.log(r / (1 - r))
    assert_close(res.mask_logits[failed], logits.view(*r.shape, 1, 1).expand_as(res.mask_logits[failed]), 1e-6, 1e-6,
                 "logit(r) clamped to [1e-6, 1 - 1e-6]")


def retry_oracle(teacher, x, k, g, **kw):
    """on_failure="retry" by hand: solve; the failed samples' first sources are solved again as
    a new batch (padded with the lowest other images up to k), row j with sources
    perm[pos(j)], perm[pos(j)+1], ... of a fresh permutation; the rows that still fail become a
    blind MixUp of their (new) sources and weights."""
    first = supermix.solve(teacher, x, k=k, generator=g, **kw)
    failed = [b for b in range(len(x)) if not bool(first.success[b])]
    anchors = [int(first.sources[b, 0]) for b in failed]
    if len(anchors) < k:
        anchors += [i for i in range(len(x)) if i not in anchors][: k - len(anchors)]
    m = len(anchors)
    perm = torch.randperm(m, generator=g).tolist()
    rows = [[perm[(perm.index(j) + i) % m] for i in range(k)] for j in range(m)]
    again = supermix.solve(teacher, x[anchors], k=k, generator=g, sources=torch.tensor(rows), **kw)
    expected = {name: getattr(first, name).clone() for name in
                ("mixed", "mask_logits", "sources", "weights", "targets", "iters", "success")}
    for n, b in enumerate(failed):
        for name in expected:
            expected[name][b] = getattr(again, name)[n]
        expected["sources"][b] = torch.tensor([anchors[int(s)] for s in again.sources[n]])
    for b in range(len(x)):
        if not bool(expected["success"][b]):
            expected["mixed"][b] = blend(x, expected["sources"][b:b + 1], expected["weights"][b:b + 1])[0].float()
    return first, again, failed, expected


# (k, alpha, seed, padded): failures fewer than k (padded with other images, one case whose
# failed sample's first source is image 0) or not; found by running the solver on the tiny case.
RETRY_CASES = [(2, 3.0, 0, False), (2, 3.0, 2, True), (2, 3.0, 4, True), (2, 3.0, 6, True), (2, 3.0, 23, False),
               (3, 1.0, 0, False), (3, 1.0, 2, True), (3, 1.0, 3, False), (3, 1.0, 4, True)]


@pytest.mark.parametrize("k,alpha,seed,padded", RETRY_CASES + [(2, 3.0, None, None)])
def test_supermix_retry_solves_the_failures_again(k, alpha, seed, padded, monkeypatch):
    # A clock that advances by one second per reading: each solve then takes a known time.
    ticks = iter(range(10**6))
    monkeypatch.setattr(supermix.solver, "time", type("Clock", (), {"perf_counter": lambda: next(ticks)}))
    teacher, x, y = TinyTeacher(), images(), int_labels()
    kw = dict(max_iters=1, **SOLVE)
    if seed is None:  # no generator: the draws come from torch's global one
        torch.manual_seed(6)
        g, replay = None, copy_of(torch.default_generator)
    else:
        g = gen(seed)
        replay = copy_of(g)
    first, again, failed, expected = retry_oracle(teacher, x, k, replay, alpha=alpha, **kw)
    assert failed and padded in (None, len(failed) < k), "the case is not the one named"
    if seed is None:
        torch.manual_seed(6)
    mixer = SuperMix(teacher, k=k, alpha=alpha, on_failure="retry", label="target", generator=g, **kw)
    x_mix, y_mix = mixer(x, y)
    res = mixer.last_result
    for name in ("sources", "weights", "targets", "iters", "success"):
        assert torch.equal(getattr(res, name), expected[name]), name
    ok = expected["success"]
    assert torch.equal(res.mask_logits[ok], expected["mask_logits"][ok])
    assert_close(x_mix, expected["mixed"], 1e-6, 1e-6, "retried, kept and blind rows")
    assert torch.equal(res.mixed, x_mix)
    assert torch.equal(res.sources[:, 0], first.sources[:, 0]), "each sample keeps its first source"
    assert_close(res.probs, seen(teacher, x_mix), 1e-6, 1e-6, "probs describe the returned images")
    assert_close(y_mix, hand_mixed_labels(expected["sources"], expected["weights"], y, CLASSES), 1e-6, 1e-6, "labels")
    assert first.stats.seconds == again.stats.seconds == 1
    for f in ("forward_calls", "backward_calls", "forward_samples", "backward_samples", "seconds"):
        assert getattr(res.stats, f) == getattr(first.stats, f) + getattr(again.stats, f), f


def test_supermix_retry_helps():
    teacher, x = TinyTeacher(), images(n=32)
    g = gen(45)
    first = supermix.solve(teacher, x, max_iters=1, generator=copy_of(g), **SOLVE)
    mixer = SuperMix(teacher, on_failure="retry", max_iters=1, generator=g, **SOLVE)
    mixer(x, int_labels(32))
    assert int(mixer.last_result.success.sum()) > int(first.success.sum())


@pytest.mark.parametrize("on_failure", ON_FAILURE)
def test_supermix_teacher_labels_describe_the_returned_images(on_failure):
    teacher, x, y = TinyTeacher(), images(), int_labels()
    mixer = SuperMix(teacher, on_failure=on_failure, max_iters=1, label_smoothing=0.1, generator=gen(46), **SOLVE)
    x_mix, y_mix = mixer(x, y)
    assert_close(y_mix, 0.9 * seen(teacher, x_mix) + 0.1 / CLASSES, 1e-6, 1e-6, "smoothed teacher labels")


def test_supermix_per_sample_mixes_selected_rows():
    teacher, x, y = TinyTeacher(), images(n=12), int_labels(12)
    g = gen(47)
    rows = (torch.rand(12, generator=copy_of(g)) < 0.6).nonzero().flatten()
    mixer = SuperMix(teacher, prob=0.6, mode="elem", max_iters=1, generator=g, **SOLVE)
    x_mix, y_mix = mixer(x, y)
    assert torch.equal(mixer.last_index, rows) and 2 <= len(rows) < 12
    rest = torch.ones(12, dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(x_mix[rest], x[rest]) and torch.equal(y_mix[rest], one_hot(y[rest], CLASSES))
    res = mixer.last_result
    rebuilt = (res.masks().unsqueeze(2) * x[rows][res.sources]).sum(dim=1)
    assert_close(rebuilt, x_mix[rows], 1e-5, 1e-5, "mixed rows from their sources")
    assert_close(y_mix[rows], seen(teacher, x_mix[rows]), 1e-6, 1e-6, "labels of the mixed rows")


def test_supermix_options_reach_the_solver():
    teacher, x = TinyTeacher(), images()
    mixer = SuperMix(teacher, min_iters=1, max_iters=3, generator=gen(48), **SOLVE)
    assert mixer.solve_kwargs == dict(min_iters=1, max_iters=3, **SOLVE)
    assert mixer.solver_teacher is teacher
    mixer(x, int_labels())
    assert int(mixer.last_result.iters.min()) >= 1
    free = SuperMix(teacher, max_iters=3, generator=gen(48), **SOLVE)
    free(x, int_labels())
    assert int(free.last_result.iters.min()) == 0, "min_iters changes nothing: vacuous"


@pytest.mark.parametrize("on_failure", ["drop", "retry"])
def test_supermix_without_failures_does_no_extra_work(on_failure):
    """When every sample meets the criterion, "drop" and "retry" cost exactly the solve: the
    same teacher work, the same draws from the generator, and no teacher call on an empty batch."""
    teacher, x, y = TinyTeacher(), images(), int_labels()
    g, replay = gen(4), gen(4)
    mixer = SuperMix(teacher, on_failure=on_failure, max_iters=3, generator=g, **SOLVE)
    mixer(x, y)
    ref = supermix.solve(TinyTeacher(), x, max_iters=3, generator=replay, **SOLVE)
    assert bool(ref.success.all()), "a failure: not the case named"
    res = mixer.last_result
    assert torch.equal(res.mixed, ref.mixed) and bool(res.success.all())
    for f in ("forward_calls", "backward_calls", "forward_samples", "backward_samples"):
        assert getattr(res.stats, f) == getattr(ref.stats, f), f
    assert torch.equal(g.get_state(), replay.get_state()), "more draws than the solve's"
    assert all(n > 0 for n, _ in teacher.calls), teacher.calls


def test_a_whole_batch_mix_returns_the_result_without_a_copy():
    """With every row mixed, x_mix and y_mix are the result's own tensors (no batch-sized copy)."""
    teacher = TinyTeacher()
    for mixer in (MixUp(teacher=teacher, generator=gen(5)), SuperMix(teacher, max_iters=1, generator=gen(5), **SOLVE)):
        x_mix, y_mix = mixer(images(), int_labels())
        assert x_mix.data_ptr() == mixer.last_result.mixed.data_ptr(), mixer.name
        assert y_mix.data_ptr() == mixer.last_result.probs.data_ptr(), mixer.name


def test_supermix_width_must_match_the_teacher():
    with pytest.raises(ValueError, match=exact("SuperMix: num_classes=3 but the teacher returns 4 classes")):
        SuperMix(TinyTeacher(), num_classes=3)(images(), int_labels())


# --------------------------------------------------------------------------------- devices ----
@pytest.mark.parametrize("make", [
    lambda t: MixUp(k=3, num_classes=CLASSES, prob=0.7, mode="elem"),
    lambda t: MixUp(k=3, num_classes=CLASSES, prob=0.5),
    lambda t: CutMix(k=3, teacher=t),
    lambda t: SuperMix(t, on_failure="retry", max_iters=1, **SOLVE),
    lambda t: SuperMix(t, on_failure="drop", max_iters=1, prob=0.7, mode="elem", **SOLVE),
], ids=["mixup-elem", "mixup-batch", "cutmix", "supermix-retry", "supermix-elem"])
@pytest.mark.parametrize("seeded", [True, False])
def test_every_tensor_is_made_on_the_images_device(make, seeded):
    """With the default device set to "meta", CPU images still give CPU results (a tensor made
    without device= would land on "meta" and fail)."""
    teacher, x, y = TinyTeacher(), images(), int_labels()
    mixer = make(teacher)
    mixer.generator = gen(49) if seeded else None
    expected = make(teacher)
    expected.generator = gen(49)
    x_ref, y_ref = expected(x, y)
    torch.manual_seed(7)  # the unseeded mixers draw from torch's global generator
    with torch.device("meta"):
        x_mix, y_mix = mixer(x, y)
    assert x_mix.device.type == "cpu" and y_mix.device.type == "cpu"
    assert mixer.last_result is not None or not seeded, "nothing mixed: vacuous"
    for name in ("mixed", "mask_logits", "sources", "weights", "targets", "probs", "iters", "success", "full_masks"):
        value = getattr(mixer.last_result, name, None)
        assert value is None or value.device.type == "cpu", name
    assert mixer.last_index.device.type == "cpu"
    if seeded:
        assert torch.equal(x_mix, x_ref) and torch.equal(y_mix, y_ref)


@pytest.mark.parametrize("cls", [MixUp, CutMix])
@pytest.mark.parametrize("k", [2, 3])
def test_draws_on_the_generator_device_results_on_the_images_device(cls, k):
    """Images on another device than the generator (here "meta", standing in for GPU images with
    a CPU generator): every draw is made on the generator's device, so the generator advances
    exactly as it does for CPU images, and every tensor of the result is on the images' device."""
    on_meta, on_cpu = gen(50), gen(50)
    mixer = cls(k=k, num_classes=CLASSES)
    res = mixer.mix_batch(torch.empty(B, 1, *SIZE, device="meta"), on_meta)
    ref = mixer.mix_batch(images(), on_cpu)
    assert torch.equal(on_meta.get_state(), on_cpu.get_state()), "a draw was not made on the generator"
    for name in ("mixed", "sources", "weights", "targets", "iters", "success", "full_masks"):
        value, expected = getattr(res, name), getattr(ref, name)
        assert (value is None) == (expected is None), name
        if value is not None:
            assert value.device.type == "meta", name
            assert value.shape == expected.shape and value.dtype == expected.dtype, name


# ---------------------------------------------------------------------------- the call form ----
def test_the_pair_may_come_as_one_tuple_or_list():
    x, y = images(), int_labels()
    ref = MixUp(num_classes=CLASSES, generator=gen(50))(x, y)
    for pair in ((x, y), [x, y]):
        out = MixUp(num_classes=CLASSES, generator=gen(50))(pair)
        assert isinstance(out, tuple) and len(out) == 2
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("inputs,count", [((), 0), ((images(),), 1), ((images(), int_labels(), None), 3),
                                          (((images(), int_labels(), None),), 3), (([images()],), 1)])
def test_wrong_number_of_inputs_is_named(inputs, count):
    with pytest.raises(TypeError, match=exact(f"MixUp: call as mixer(x, y) or mixer((x, y)), got {count} input(s)")):
        MixUp(num_classes=CLASSES)(*inputs)


@pytest.mark.parametrize("x,got", [
    (torch.zeros(B, 8, 8), "([8, 8, 8], torch.float32)"),
    (torch.zeros(B, 1, 8, 8, dtype=torch.long), "([8, 1, 8, 8], torch.int64)"),
    (torch.zeros(1, B, 1, 8, 8), "([1, 8, 1, 8, 8], torch.float32)"),
    ([[0.0]], "list"),
])
def test_bad_images_are_named(x, got):
    with pytest.raises(ValueError, match=exact(f"CutMix: x must be a float tensor [B,C,H,W], got {got}")):
        CutMix(num_classes=CLASSES)(x, int_labels())


@pytest.mark.parametrize("y,error,message", [
    (torch.zeros(B + 1, dtype=torch.long), ValueError,
     "MixUp: y must be [B=8] class labels or [B=8, num_classes=4] soft labels for x of batch size 8, got shape [9]"),
    (torch.zeros(B, 4, 1), ValueError,
     "MixUp: y must be [B=8] class labels or [B=8, num_classes=4] soft labels for x of batch size 8, "
     "got shape [8, 4, 1]"),
    (torch.zeros((), dtype=torch.long), ValueError,
     "MixUp: y must be [B=8] class labels or [B=8, num_classes=4] soft labels for x of batch size 8, got shape []"),
    (torch.zeros(B - 1, CLASSES), ValueError,
     "MixUp: y must be [B=8] class labels or [B=8, num_classes=4] soft labels for x of batch size 8, "
     "got shape [7, 4]"),
    (torch.tensor([0, 1, 2, 3, 4, 0, 0, 0]), ValueError,
     "MixUp: y class labels must be in [0, num_classes=4), got values in [0, 4]"),
    (torch.tensor([1, -1, 2, 3, 3, 1, 1, 1]), ValueError,
     "MixUp: y class labels must be in [0, num_classes=4), got values in [-1, 3]"),
    (torch.zeros(B), TypeError, "MixUp: y [B] must hold int class labels, got dtype torch.float32"),
    (torch.zeros(B, dtype=torch.bool), TypeError, "MixUp: y [B] must hold int class labels, got dtype torch.bool"),
    (torch.zeros(B, dtype=torch.complex64), TypeError,
     "MixUp: y [B] must hold int class labels, got dtype torch.complex64"),
    (torch.full((B, 3), 0.25), ValueError, "MixUp: y soft labels must be [B, num_classes=4], got width 3"),
    (torch.zeros(B, CLASSES, dtype=torch.long), TypeError,
     "MixUp: y soft labels [B, num_classes] must be float, got dtype torch.int64"),
    (torch.full((B, CLASSES), float("nan")), ValueError, "MixUp: y soft labels must be finite and >= 0"),
    (torch.full((B, CLASSES), float("inf")), ValueError, "MixUp: y soft labels must be finite and >= 0"),
    (torch.full((B, CLASSES), 0.25) - torch.eye(B, CLASSES) * 0.5, ValueError,
     "MixUp: y soft labels must be finite and >= 0"),
    ([0] * B, TypeError, "MixUp: y must be a tensor of int class labels [B] or soft labels [B, num_classes], got list"),
])
def test_bad_labels_are_named(y, error, message):
    with pytest.raises(error, match=exact(message)):
        MixUp(num_classes=CLASSES)(images(), y)


def test_boundary_labels_are_accepted():
    _, y_mix = MixUp(num_classes=CLASSES, prob=0.0)(images(), torch.tensor([0, 3, 0, 3, 1, 2, 0, 3]))
    assert torch.equal(y_mix, one_hot(torch.tensor([0, 3, 0, 3, 1, 2, 0, 3]), CLASSES))
    zeros = torch.zeros(B, CLASSES)
    _, y_mix = MixUp(num_classes=CLASSES, prob=0.0)(images(), zeros)
    assert torch.equal(y_mix, zeros)


# ---------------------------------------------------------------------------- construction ----
def _valid_options(cls):
    return {MixUp: ["alpha", "config", "generator", "k", "label", "label_smoothing", "mode", "num_classes", "prob",
                    "teacher"],
            CutMix: ["alpha", "config", "generator", "k", "label", "label_smoothing", "mode", "num_classes", "prob",
                     "teacher"],
            SuperMix: ["alpha", "config", "generator", "k", "label", "label_smoothing", "mode", "num_classes",
                       "on_failure", "prob", "teacher"]}[cls]


def test_options_are_listed():
    for cls in (MixUp, CutMix, SuperMix):
        assert cls.options() == _valid_options(cls)
    assert "lambda_s" in SOLVE_OPTIONS and "min_iters" in SOLVE_OPTIONS and "max_iters" in SOLVE_OPTIONS
    for owned in ("teacher", "images", "k", "alpha", "generator", "sources"):
        assert owned not in SOLVE_OPTIONS


def test_unknown_options_are_named():
    valid = _valid_options(MixUp)
    with pytest.raises(TypeError, match=exact(f"MixUp: unknown option(s) ['mixup_alpha']; valid options: {valid}")):
        MixUp(num_classes=CLASSES, mixup_alpha=0.2)
    with pytest.raises(TypeError, match=exact(f"CutMix: unknown option(s) ['a', 'b']; valid options: {valid}")):
        CutMix(num_classes=CLASSES, b=1, a=2)
    full = sorted(_valid_options(SuperMix) + list(SOLVE_OPTIONS))
    with pytest.raises(TypeError, match=exact(f"SuperMix: unknown option(s) ['lamda_s']; valid options: {full}")):
        SuperMix(TinyTeacher(), lamda_s=25.0)
    with pytest.raises(TypeError, match=exact(f"SuperMix: unknown option(s) ['sources']; valid options: {full}")):
        SuperMix(TinyTeacher(), sources=None)
    SuperMix(TinyTeacher(), lambda_s=10.0, sigma=0.5)  # solver options are accepted


_ARG_ERRORS = [
    (dict(k=1), "k must be an int >= 2, got 1"),
    (dict(k=2.0), "k must be an int >= 2, got 2.0"),
    (dict(k=True), "k must be an int >= 2, got True"),
    (dict(alpha=0), "alpha must be a finite number > 0, got 0"),
    (dict(alpha=-1.0), "alpha must be a finite number > 0, got -1.0"),
    (dict(alpha=float("inf")), "alpha must be a finite number > 0, got inf"),
    (dict(alpha="1"), "alpha must be a finite number > 0, got '1'"),
    (dict(alpha=True), "alpha must be a finite number > 0, got True"),
    (dict(label_smoothing=1.0), "label_smoothing must be a finite number in [0, 1), got 1.0"),
    (dict(label_smoothing=-0.1), "label_smoothing must be a finite number in [0, 1), got -0.1"),
    (dict(label_smoothing=float("nan")), "label_smoothing must be a finite number in [0, 1), got nan"),
    (dict(prob=1.5), "prob must be a finite number in [0, 1], got 1.5"),
    (dict(prob=-0.5), "prob must be a finite number in [0, 1], got -0.5"),
    (dict(prob=None), "prob must be a finite number in [0, 1], got None"),
    (dict(mode="pair"), "mode must be one of ('batch', 'elem'), got 'pair'"),
    (dict(num_classes=1), "num_classes must be an int >= 2, got 1"),
    (dict(num_classes=4.0), "num_classes must be an int >= 2, got 4.0"),
    (dict(num_classes=True), "num_classes must be an int >= 2, got True"),
    (dict(label="hard"), "label must be one of ('teacher', 'target'), got 'hard'"),
]


@pytest.mark.parametrize("kwargs,message", _ARG_ERRORS)
@pytest.mark.parametrize("cls", [MixUp, CutMix, SuperMix])
def test_bad_arguments_are_named(cls, kwargs, message):
    if cls is SuperMix:
        make = lambda **kw: SuperMix(TinyTeacher(), **kw)  # noqa: E731
    else:
        make = lambda **kw: cls(**{"num_classes": CLASSES, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=exact(f"{cls.name}: {message}")):
        make(**kwargs)


def test_mixer_specific_argument_errors():
    with pytest.raises(ValueError, match=exact("SuperMix: teacher is required")):
        SuperMix(None)
    with pytest.raises(ValueError, match=exact("SuperMix: on_failure must be one of ('drop', 'retry', 'keep'), "
                                               "got 'skip'")):
        SuperMix(TinyTeacher(), on_failure="skip")
    with pytest.raises(ValueError, match=exact("MixUp: label='teacher' needs a teacher (teacher=None)")):
        MixUp(num_classes=CLASSES, label="teacher")
    with pytest.raises(ValueError, match=exact("CutMix: num_classes is required without a teacher (the label width "
                                               "cannot come from the labels of one batch)")):
        CutMix()
    with pytest.raises(ValueError, match=exact("MixUp: num_classes is required without a teacher (the label width "
                                               "cannot come from the labels of one batch)")):
        MixUp(label="target")


@pytest.mark.parametrize("kwargs", [dict(k=2), dict(alpha=1e-9), dict(label_smoothing=0.0), dict(label_smoothing=0.999),
                                    dict(prob=0), dict(prob=1), dict(num_classes=2), dict(mode="elem")])
def test_boundary_arguments_are_accepted(kwargs):
    MixUp(**{"num_classes": CLASSES, **kwargs})


def test_settings_are_kept_and_shown():
    teacher = TinyTeacher()
    mixer = MixUp(k=3, alpha=2, num_classes=CLASSES, label_smoothing=0, prob=1, mode="elem")
    assert (mixer.k, mixer.alpha, mixer.num_classes, mixer.label, mixer.label_smoothing, mixer.prob, mixer.mode) == (
        3, 2.0, CLASSES, "target", 0.0, 1.0, "elem")
    assert all(type(v) is float for v in (mixer.alpha, mixer.label_smoothing, mixer.prob))
    assert mixer.teacher is None and mixer.generator is None
    assert mixer.last_result is None and mixer.last_index is None
    assert repr(mixer) == ("MixUp(k=3, alpha=2.0, label='target', num_classes=4, label_smoothing=0.0, prob=1.0, "
                           "mode='elem')")
    assert repr(CutMix(teacher=teacher)) == ("CutMix(k=2, alpha=1.0, label='teacher', num_classes=None, "
                                             "label_smoothing=0.0, prob=1.0, mode='batch')")
    g = gen()
    sm = SuperMix(teacher, generator=g, max_iters=5)
    assert sm.generator is g and sm.teacher is teacher
    assert repr(sm) == ("SuperMix(k=2, alpha=3.0, label='teacher', num_classes=None, label_smoothing=0.0, prob=1.0, "
                        "mode='batch', on_failure='drop', solve_kwargs={'max_iters': 5})")


def test_create_mixer_by_name():
    teacher = TinyTeacher()
    assert sorted(MIXERS) == ["cutmix", "mixup", "supermix"]
    sm = create_mixer("SuperMix", teacher=teacher, k=3, max_iters=2)
    assert type(sm) is SuperMix and sm.teacher is teacher and sm.k == 3 and sm.solve_kwargs == {"max_iters": 2}
    mu = create_mixer("mixup", teacher=teacher, alpha=0.5)
    assert type(mu) is MixUp and mu.teacher is teacher and mu.alpha == 0.5 and mu.label == "teacher"
    cm = create_mixer("CUTMIX", num_classes=5)
    assert type(cm) is CutMix and cm.teacher is None and cm.num_classes == 5
    with pytest.raises(ValueError, match=exact("mixer must be one of ['cutmix', 'mixup', 'supermix'], got 'FMix'")):
        create_mixer("FMix", teacher=teacher)


def test_no_warnings():
    teacher = TinyTeacher()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mixer in (MixUp(teacher=teacher, generator=gen()), CutMix(num_classes=CLASSES, prob=0.5, mode="elem"),
                      SuperMix(teacher, on_failure="retry", max_iters=1, generator=gen(), **SOLVE)):
            mixer(images(), int_labels())
