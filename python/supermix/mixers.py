"""Batch mixers with one calling convention: ``x_mix, y_mix = mixer(x, y)``.

Like timm's ``Mixup`` and torchvision's ``v2.MixUp``/``v2.CutMix``: ``x`` is a float batch
[B,C,H,W], ``y`` holds int class labels [B] (or soft labels [B, num_classes]), and ``y_mix`` is
a float32 soft label [B, num_classes]. ``mixer((x, y))`` takes the pair as one tuple. Mixers are
``nn.Module`` transforms, so ``torchvision.transforms.v2.RandomChoice([SuperMix(...),
v2.CutMix(...)])`` composes them; they also work in a ``collate_fn``. Every mixer combines
k >= 2 images with weights r ~ Dirichlet(alpha), each image of the batch mixed with k-1 others
(cyclic shifts of a random permutation). ``MixUp`` and ``CutMix`` are blind; ``SuperMix`` runs
the solver of ``supermix.solver``.

Label contract (``label=``): ``y_mix`` describes ``x_mix``.

- ``"teacher"``, the default wherever there is a teacher (always for ``SuperMix``; ``MixUp`` and
  ``CutMix`` given ``teacher=``): the teacher's softmax on the returned image ``x_mix``, as the
  paper labels its mixed images (sec. 1, 3). Its argmax is the teacher's top class on ``x_mix``.
- ``"target"``: sum_i r_i y_i with the batch's own labels y_i (one-hot for int labels), r the
  weights of the sources: MixUp's blend, CutMix's covered pixel fractions, SuperMix's Dirichlet
  targets (which a SuperMix image carries only where the solver reached them). The default of
  ``MixUp``/``CutMix`` without a teacher, which then need ``num_classes``.

Samples left unmixed (``prob`` < 1) keep their own labels, one-hot for int labels.
``label_smoothing`` eps then maps every row to (1 - eps) y_mix + eps / num_classes (timm's
smoothing of one-hot labels, mixed the same way). The label width is ``num_classes`` or the
teacher's output width, the same for every batch; labels are checked against the batch.

SuperMix samples that miss the termination criterion within ``max_iters`` follow
``on_failure``: ``"drop"`` (default) replaces them with a blind MixUp of the same sources and
weights r, labelled like every other sample (so ``label="target"`` never labels an image that
does not carry its targets); ``"retry"`` solves them once more with fresh partners and weights,
then drops those that fail again; ``"keep"`` returns the solver's last image.

``mixer.last_result`` is the ``MixResult`` of the samples mixed in the last call (per-sample
``success``, ``iters``, ``weights``, ``sources``, ``probs``, ``masks()``), describing the
returned images: ``x_mix[mixer.last_index] == last_result.mixed``, its ``sources`` index
``x[mixer.last_index]``; rows with ``success`` False hold the blind replacements under
``"drop"``/``"retry"``. ``None`` when nothing was mixed.

Each mixer's offline form, ``mixer.mix_batch(x, generator=...)``, returns the full ``MixResult``
(sources, weights, masks, teacher probabilities, failures as they are): the form
``supermix generate`` writes.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from supermix.config import SOLVER_FIELDS, SolverConfig
from supermix.solver import MixResult, SolveStats, cyclic_sources, eval_mode, sample_dirichlet, solve

__all__ = ["CutMix", "MixUp", "SuperMix", "create_mixer", "register_mixer", "mixer_names", "mixer_solves", "MIXERS", "LABELS", "MODES",
           "ON_FAILURE", "SOLVE_OPTIONS"]

LABELS = ("teacher", "target")
MODES = ("batch", "elem")
ON_FAILURE = ("drop", "retry", "keep")

# The solver settings SuperMix takes as keywords besides k and alpha (its own options).
SOLVE_OPTIONS = tuple(name for name in SOLVER_FIELDS if name not in ("k", "alpha"))

# The registry: key -> mixer class. Every list of mixers (create_mixer, the commands' --mixer
# and --online choices, the demo's titles, which sets have masks) comes from it. A mixing
# method is one class with ``key``, ``name`` (its title), ``solves`` (a solver chooses its
# masks: mask logits, iterations, success of its own) and ``labels``, registered with
# ``@register_mixer`` (docs/ARCHITECTURE.md, "Adding a mixing method").
MIXERS: dict[str, type] = {}


def mixer_names() -> tuple[str, ...]:
    """The registered keys, the mixers that solve first, then in registration order
    (``("supermix", "mixup", "cutmix")``): the commands' choices."""
    return tuple(sorted(MIXERS, key=lambda key: not MIXERS[key].solves))


def mixer_solves(name: str) -> bool:
    """Whether the registered mixer ``name`` solves for its masks (False for unknown names)."""
    cls = MIXERS.get(name)
    return bool(cls is not None and cls.solves)


def register_mixer(cls):
    """Class decorator: add ``cls`` to :data:`MIXERS` under ``cls.key``."""
    if cls.key in MIXERS:
        raise ValueError(f"register_mixer: {cls.key!r} is registered already ({MIXERS[cls.key].__name__})")
    MIXERS[cls.key] = cls
    return cls


def _reject_unknown(name: str, unknown: dict, valid) -> None:
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}; valid options: {sorted(valid)}")


def _check_common(name: str, k, alpha, num_classes, label_smoothing, prob, mode) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"{name}: k must be an int >= 2, got {k!r}")
    for arg, value, ok, expected in (
        ("alpha", alpha, lambda v: v > 0, "> 0"),
        ("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("prob", prob, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name}: {arg} must be a finite number {expected}, got {value!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 2):
        raise ValueError(f"{name}: num_classes must be an int >= 2, got {num_classes!r}")
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")


def _unpack(name: str, inputs: tuple):
    """(x, y) from ``mixer(x, y)`` or ``mixer((x, y))``, as torchvision's v2 transforms take them."""
    if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
        inputs = tuple(inputs[0])
    if len(inputs) != 2:
        raise TypeError(f"{name}: call as mixer(x, y) or mixer((x, y)), got {len(inputs)} input(s)")
    return inputs


def _check_images(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = (list(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a float tensor [B,C,H,W], got {got}")


def _soft_labels(name: str, y, batch: int, num_classes: int, device) -> torch.Tensor:
    """y (int [B] or soft [B, num_classes]) checked against the batch -> float32 [B, num_classes]."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: y must be a tensor of int class labels [B] or soft labels [B, num_classes], "
                        f"got {type(y).__name__}")
    if y.dim() not in (1, 2) or y.shape[0] != batch:
        raise ValueError(f"{name}: y must be [B={batch}] class labels or [B={batch}, num_classes={num_classes}] "
                         f"soft labels for x of batch size {batch}, got shape {list(y.shape)}")
    y = y.to(device)
    if y.dim() == 1:
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"{name}: y [B] must hold int class labels, got dtype {y.dtype}")
        lo, hi = (int(y.min()), int(y.max())) if batch else (0, 0)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: y class labels must be in [0, num_classes={num_classes}), "
                             f"got values in [{lo}, {hi}]")
        return F.one_hot(y.long(), num_classes).float()
    if y.shape[1] != num_classes:
        raise ValueError(f"{name}: y soft labels must be [B, num_classes={num_classes}], "
                         f"got width {y.shape[1]}")
    if not y.is_floating_point():
        raise TypeError(f"{name}: y soft labels [B, num_classes] must be float, got dtype {y.dtype}")
    if not bool(torch.isfinite(y).all()) or bool((y < 0).any()):
        raise ValueError(f"{name}: y soft labels must be finite and >= 0")
    return y.float()


def _draw_device(generator, x: torch.Tensor):
    return generator.device if generator is not None else x.device


def _blind_result(mixed, sources, weights, full_masks=None) -> MixResult:
    B = mixed.shape[0]
    return MixResult(
        mixed=mixed, mask_logits=None, sources=sources, weights=weights, targets=weights,
        probs=None, iters=torch.zeros(B, dtype=torch.long, device=mixed.device),
        success=torch.ones(B, dtype=torch.bool, device=mixed.device), full_masks=full_masks,
        stats=SolveStats(),
    )


def _k_alpha(name: str, k, alpha, config, default_alpha: float) -> tuple:
    """A mixer's k and alpha: the ones given, else the config's, else the defaults."""
    if config is not None and not isinstance(config, SolverConfig):
        raise TypeError(f"{name}: config must be a SolverConfig, got {type(config).__name__}")
    if k is None:
        k = config.k if config is not None else SolverConfig.k
    if alpha is None:
        alpha = config.alpha if config is not None else default_alpha
    return k, alpha


class _Mixer(nn.Module):
    """Shared plumbing: label contract, checks, ``prob``, and the (x, y) convention.

    The teacher is held, not owned: it is no submodule, so the mixer's ``state_dict`` is empty
    and ``.train()``/``.eval()``/``.to()`` leave the teacher alone (it is run in eval mode).
    """

    name = "mixer"
    key = "mixer"
    solves = False
    labels = LABELS

    # No defaults: each public mixer states its own (SuperMix's alpha and label differ from the
    # blind mixers'), and passes every setting here.
    def __init__(self, *, k: int, alpha: float, num_classes: int | None, teacher, label: str | None,
                 label_smoothing: float, prob: float, mode: str, generator: torch.Generator | None):
        super().__init__()
        _check_common(self.name, k, alpha, num_classes, label_smoothing, prob, mode)
        if label is None:
            label = "teacher" if teacher is not None else "target"
        if label not in LABELS:
            raise ValueError(f"{self.name}: label must be one of {LABELS}, got {label!r}")
        if label == "teacher" and teacher is None:
            raise ValueError(f"{self.name}: label='teacher' needs a teacher (teacher=None)")
        if teacher is None and num_classes is None:
            raise ValueError(f"{self.name}: num_classes is required without a teacher (the label width "
                             f"cannot come from the labels of one batch)")
        self.k = k
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.teacher = teacher
        self.label = label
        self.label_smoothing = float(label_smoothing)
        self.prob = float(prob)
        self.mode = mode
        self.generator = generator
        self.last_result: MixResult | None = None
        self.last_index: torch.Tensor | None = None
        self._width: int | None = None

    def __setattr__(self, name, value):
        if name == "teacher":  # held, not registered as a submodule (see the class docstring)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def options(cls) -> list[str]:
        """Names of the keyword options the constructor accepts."""
        params = inspect.signature(cls.__init__).parameters
        return sorted(n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD)

    def extra_repr(self) -> str:
        return (f"k={self.k}, alpha={self.alpha}, label={self.label!r}, num_classes={self.num_classes}, "
                f"label_smoothing={self.label_smoothing}, prob={self.prob}, mode={self.mode!r}")

    # ----------------------------------------------------------------------- teacher ----
    def _teacher_probs(self, mixed: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.teacher), torch.no_grad():
            logits = self.teacher(mixed).float()
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits).all(dim=1)).sum())
            raise FloatingPointError(f"{self.name}: the teacher returned non-finite logits (NaN or inf) on {bad} "
                                     f"of {logits.shape[0]} images; check its weights and the input normalisation")
        return F.softmax(logits, dim=1)

    def _label_width(self, x: torch.Tensor) -> int:
        """num_classes, or the teacher's output width (one image, once), checked against it."""
        if self._width is None:
            if self.teacher is None:
                self._width = self.num_classes
            else:
                width = self._teacher_probs(x[:1]).shape[1]
                if self.num_classes is not None and self.num_classes != width:
                    raise ValueError(f"{self.name}: num_classes={self.num_classes} but the teacher returns "
                                     f"{width} classes")
                self._width = width
        return self._width

    # ------------------------------------------------------------------------- forms ----
    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        """Offline form: mix every image of x with k-1 others; the full ``MixResult``."""
        raise NotImplementedError

    def _mix_for_training(self, x: torch.Tensor) -> MixResult:
        """The online form's mixing of the rows chosen by ``prob``; ``probs`` set for label='teacher'."""
        raise NotImplementedError

    def _rows_to_mix(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        """[M] int64 rows of the batch to mix this call (``prob`` per batch or per sample)."""
        everything = torch.arange(batch, device=x.device)
        if self.prob >= 1.0:
            return everything
        if self.prob <= 0.0:
            return everything[:0]
        device = _draw_device(self.generator, x)
        if self.mode == "batch":
            draw = torch.rand((), generator=self.generator, device=device)
            return everything if float(draw) < self.prob else everything[:0]
        keep = torch.rand(batch, generator=self.generator, device=device) < self.prob
        return keep.nonzero().flatten().to(x.device)

    def forward(self, *inputs):
        """``mixer(x, y)`` or ``mixer((x, y))`` -> (x_mix [B,C,H,W], y_mix [B,num_classes] float32)."""
        x, y = _unpack(self.name, inputs)
        _check_images(self.name, x)
        batch = x.shape[0]
        if self.prob >= 1.0 and batch < self.k:
            raise ValueError(f"{self.name}: k={self.k} sources need a batch of at least k images, got B={batch}")
        width = self._label_width(x)
        y_soft = _soft_labels(self.name, y, batch, width, x.device)
        rows = self._rows_to_mix(batch, x)
        self.last_result, self.last_index = None, rows[:0]
        x_mix, y_mix = x, y_soft
        if rows.numel() >= self.k:  # fewer selected images than k: nothing can be mixed
            whole = rows.numel() == batch
            result = self._mix_for_training(x if whole else x[rows])
            if self.label == "teacher":
                labels = result.probs
            else:
                own = y_soft if whole else y_soft[rows]
                labels = (result.weights.unsqueeze(2) * own[result.sources]).sum(dim=1)
            if whole:
                x_mix, y_mix = result.mixed, labels.float()
            else:
                x_mix, y_mix = x.clone(), y_soft.clone()
                x_mix[rows] = result.mixed
                y_mix[rows] = labels.float()
            self.last_result, self.last_index = result, rows
        if self.label_smoothing > 0:
            y_mix = y_mix * (1.0 - self.label_smoothing) + self.label_smoothing / width
        return x_mix, y_mix


class _BlindMixer(_Mixer):
    """A mixer that does not look at the images; labelled by a teacher when one is given."""

    def __init__(self, k: int | None = None, alpha: float | None = None,
                 num_classes: int | None = None, teacher=None, label: str | None = None,
                 label_smoothing: float = 0.0, prob: float = 1.0, mode: str = "batch",
                 generator: torch.Generator | None = None, config: SolverConfig | None = None,
                 **unknown):
        _reject_unknown(self.name, unknown, self.options())
        # k and alpha: given, else the config's, else 2 and 1.0.
        k, alpha = _k_alpha(self.name, k, alpha, config, default_alpha=1.0)
        super().__init__(k=k, alpha=alpha, num_classes=num_classes, teacher=teacher, label=label,
                         label_smoothing=label_smoothing, prob=prob, mode=mode, generator=generator)

    def _blind_mix(self, x: torch.Tensor, generator: torch.Generator | None) -> MixResult:
        raise NotImplementedError

    def _label_with_teacher(self, result: MixResult, x: torch.Tensor) -> MixResult:
        probs = self._teacher_probs(result.mixed)
        labels = self._teacher_probs(x).argmax(dim=1)
        result.labels = labels
        result.probs = probs
        result.targets = torch.zeros_like(probs).scatter_add_(1, labels[result.sources], result.weights)
        return result

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> MixResult:
        _check_images(self.name, x)
        if x.shape[0] < self.k:
            raise ValueError(f"{self.name}: k={self.k} sources need a batch of at least k images, got B={x.shape[0]}")
        result = self._blind_mix(x, generator)
        return self._label_with_teacher(result, x) if self.teacher is not None else result

    def _mix_for_training(self, x: torch.Tensor) -> MixResult:
        result = self._blind_mix(x, self.generator)
        if self.label == "teacher":
            result.probs = self._teacher_probs(result.mixed)
        return result


@register_mixer
class MixUp(_BlindMixer):
    """k-way MixUp: x_mix = sum_i r_i x_i, r ~ Dirichlet(alpha) (Beta(alpha, alpha) for k=2).

    Options: ``k``, ``alpha``, ``num_classes`` (required without ``teacher``), ``teacher``,
    ``label`` (``"teacher"`` | ``"target"``), ``label_smoothing``, ``prob`` and ``mode``
    (``"batch"``: the whole batch mixed with probability prob; ``"elem"``: each sample, mixed
    with others picked the same way), ``generator``. See the module docstring for the labels.
    """

    name = "MixUp"
    key = "mixup"

    def _blind_mix(self, x: torch.Tensor, generator: torch.Generator | None) -> MixResult:
        # The samplers draw on the generator's device when there is one, else on x's.
        sources = cyclic_sources(x.shape[0], self.k, generator, x.device).to(x.device)
        weights = sample_dirichlet(x.shape[0], self.k, self.alpha, generator, x.device).to(x.device)
        mixed = (weights.view(*weights.shape, 1, 1, 1).to(x.dtype) * x[sources]).sum(dim=1)
        return _blind_result(mixed, sources, weights)


@register_mixer
class CutMix(_BlindMixer):
    """k-way CutMix: source 0 is the background; for i >= 1 a box of area fraction r_i, at a
    uniformly random centre and clipped at the border, is pasted from source i (later boxes
    over earlier ones). The weights returned are the pixel fractions each source really covers
    (as timm's ``correct_lam``), so ``label="target"`` matches the image. Options as ``MixUp``.
    """

    name = "CutMix"
    key = "cutmix"

    def _blind_mix(self, x: torch.Tensor, generator: torch.Generator | None) -> MixResult:
        B, _, H, W = x.shape
        device = _draw_device(generator, x)
        sources = cyclic_sources(B, self.k, generator, device).to(x.device)
        r = sample_dirichlet(B, self.k, self.alpha, generator, device)
        owner = torch.zeros(B, H, W, dtype=torch.long, device=device)
        rows = torch.arange(H, device=device).view(1, H, 1)
        cols = torch.arange(W, device=device).view(1, 1, W)
        for i in range(1, self.k):
            side = r[:, i].sqrt()
            cut_h = (side * H).round().long().view(B, 1, 1)
            cut_w = (side * W).round().long().view(B, 1, 1)
            cy = torch.randint(0, H, (B, 1, 1), generator=generator, device=device)
            cx = torch.randint(0, W, (B, 1, 1), generator=generator, device=device)
            inside = ((rows >= cy - cut_h // 2) & (rows < cy - cut_h // 2 + cut_h)
                      & (cols >= cx - cut_w // 2) & (cols < cx - cut_w // 2 + cut_w))
            owner = torch.where(inside, torch.full_like(owner, i), owner)
        masks = F.one_hot(owner, self.k).permute(0, 3, 1, 2).to(x.device, torch.float32)
        weights = masks.mean(dim=(2, 3))
        mixed = (masks.unsqueeze(2).to(x.dtype) * x[sources]).sum(dim=1)
        return _blind_result(mixed, sources, weights, full_masks=masks)


@register_mixer
class SuperMix(_Mixer):
    """SuperMix: masks solved so the teacher sees every source class (Algorithm 1).

    ``y_mix`` is, by default (``label="teacher"``), the teacher's softmax on the returned image;
    ``label="target"`` gives sum_i r_i y_i with the batch's own labels. Samples that miss the
    termination criterion follow ``on_failure`` (``"drop"``, default: a blind MixUp of the same
    sources and weights, labelled the same way; ``"retry"``: solved once more with fresh
    partners and weights, then dropped if they fail again; ``"keep"``). ``num_classes``, when
    given, must equal the teacher's output width. ``label_smoothing``, ``prob``, ``mode`` and
    ``generator`` as for ``MixUp``. Every other keyword goes to ``supermix.solve`` and must be
    one of its options (``SOLVE_OPTIONS``: lambda_s, sigma, mask_size, max_iters, min_iters,
    method, backend, ...); ``min_iters`` is the number of steps every sample takes before
    success may stop it. See the module docstring for the label contract and ``last_result``.
    """

    name = "SuperMix"
    key = "supermix"
    solves = True

    def __init__(self, teacher=None, k: int | None = None, alpha: float | None = None,
                 num_classes: int | None = None, label: str = "teacher", on_failure: str = "drop",
                 label_smoothing: float = 0.0, prob: float = 1.0, mode: str = "batch",
                 generator: torch.Generator | None = None, config: SolverConfig | None = None,
                 **solve_kwargs):
        if teacher is None:
            raise ValueError("SuperMix: teacher is required")
        _reject_unknown(self.name, {n: v for n, v in solve_kwargs.items() if n not in SOLVE_OPTIONS},
                        self.options() + list(SOLVE_OPTIONS))
        if on_failure not in ON_FAILURE:
            raise ValueError(f"SuperMix: on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        k, alpha = _k_alpha(self.name, k, alpha, config, default_alpha=SolverConfig.alpha)
        super().__init__(k=k, alpha=alpha, num_classes=num_classes, teacher=teacher, label=label,
                         label_smoothing=label_smoothing, prob=prob, mode=mode, generator=generator)
        self.on_failure = on_failure
        self.solve_kwargs = solve_kwargs
        # The solver's settings: the config (or the defaults) with this mixer's k, alpha and
        # keyword settings; checked here, when the mixer is made.
        self.config = (config or SolverConfig()).replace(k=self.k, alpha=self.alpha, **solve_kwargs)

    @property
    def solver_teacher(self):
        """The teacher the solver uses (the same as ``teacher``)."""
        return self.teacher

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, on_failure={self.on_failure!r}, solve_kwargs={self.solve_kwargs}"

    def mix_batch(self, x: torch.Tensor, generator: torch.Generator | None = None,
                  source_logits: torch.Tensor | None = None) -> MixResult:
        """The solver's result for ``x`` (failures as they are); ``source_logits``: the
        teacher's logits on ``x`` when the caller has them (``solve`` then skips that pass)."""
        _check_images(self.name, x)
        return solve(self.teacher, x, self.config, generator, source_logits=source_logits)

    def _mix_for_training(self, x: torch.Tensor) -> MixResult:
        result = self.mix_batch(x, self.generator)
        if self.on_failure == "keep":
            return result
        if self.on_failure == "retry" and not bool(result.success.all()):
            self._retry(x, result, (~result.success).nonzero().flatten())
        if not bool(result.success.all()):
            self._replace_with_blind(x, result, (~result.success).nonzero().flatten())
        return result

    def _retry(self, x: torch.Tensor, result: MixResult, rows: torch.Tensor) -> None:
        """Solve ``rows`` again in place: each keeps its first source, with fresh partners among
        the other failed samples' first sources (padded with other images up to k) and fresh r."""
        anchors = result.sources[rows, 0]
        if anchors.numel() < self.k:
            free = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            free[anchors] = False
            anchors = torch.cat([anchors, free.nonzero().flatten()[: self.k - anchors.numel()]])
        m = anchors.numel()
        perm = torch.randperm(m, generator=self.generator, device=_draw_device(self.generator, x)).to(x.device)
        position = torch.empty_like(perm)
        position[perm] = torch.arange(m, device=x.device)
        # Row j starts at its own image j, then follows the permutation: k distinct sources.
        sources = perm[(position.unsqueeze(1) + torch.arange(self.k, device=x.device)) % m]
        again = solve(self.teacher, x[anchors], self.config, self.generator, sources=sources)
        n = rows.numel()
        result.mixed[rows] = again.mixed[:n]
        result.mask_logits[rows] = again.mask_logits[:n]
        result.sources[rows] = anchors[again.sources[:n]]
        result.weights[rows] = again.weights[:n]
        result.targets[rows] = again.targets[:n]
        result.probs[rows] = again.probs[:n]
        result.iters[rows] = again.iters[:n]
        result.success[rows] = again.success[:n]
        for f in ("forward_calls", "backward_calls", "forward_samples", "backward_samples", "seconds"):
            setattr(result.stats, f, getattr(result.stats, f) + getattr(again.stats, f))

    def _replace_with_blind(self, x: torch.Tensor, result: MixResult, rows: torch.Tensor) -> None:
        """MixUp of the same sources and weights r in place of ``rows``; their mask logits become
        logit(r), constant, so ``masks()`` gives r everywhere; ``success`` stays False."""
        weights = result.weights[rows]
        mixed = (weights.view(*weights.shape, 1, 1, 1).to(x.dtype) * x[result.sources[rows]]).sum(dim=1)
        result.mixed[rows] = mixed
        result.probs[rows] = self._teacher_probs(mixed)
        r = weights.clamp(1e-6, 1 - 1e-6)
        logits = torch.log(r / (1 - r)).view(*r.shape, 1, 1)
        result.mask_logits[rows] = logits.expand(-1, -1, *result.mask_logits.shape[2:]).to(result.mask_logits.dtype)


def create_mixer(name: str, teacher=None, **kwargs):
    """``create_mixer("supermix" | "mixup" | "cutmix", teacher=..., k=..., alpha=...)``: the
    registered mixer ``name`` (:data:`MIXERS`)."""
    key = name.lower()
    if key not in MIXERS:
        raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {name!r}")
    return MIXERS[key](teacher=teacher, **kwargs)
