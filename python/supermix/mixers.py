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

import torch
import torch.nn.functional as F

from supermix.config import SOLVER_FIELDS, SolverConfig
from supermix.mixer_base import (LABELS, MODES, ON_FAILURE, _BlindMixer, _Mixer, _blind_result,
                                 _check_images, _draw_device, _k_alpha, _reject_unknown)
from supermix.solver import MixResult, cyclic_sources, sample_dirichlet, solve

__all__ = ["CutMix", "MixUp", "SuperMix", "create_mixer", "register_mixer", "mixer_names", "mixer_solves", "MIXERS", "LABELS", "MODES",
           "ON_FAILURE", "SOLVE_OPTIONS"]


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
