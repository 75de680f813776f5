"""The measures of a mixed set that may explain its effect on a student (the study's per-seed
set measures): solver iterations, success, mask sparsity, the teacher's agreement with the
targets."""
from __future__ import annotations

import os

import torch

__all__ = ["SET_MEASURES", "mixed_set_statistics"]


# What mixed_set_statistics returns, in report order: (key, column title, how to read it).
SET_MEASURES = (
    ("zero_iters", "at 0 iterations",
     "fraction of samples the solver kept at its start (uniform masks: a plain average)"),
    ("mask_sparsity", "mask sparsity term",
     "the sparsity term of eq. 5, mean over sources and pixels of m_i (1 - m_i): 0 when each "
     "pixel comes from one source, 0.25 for an even 50/50 average of two (MixUp: the mean of "
     "r_i (1 - r_i); CutMix: 0)"),
    ("kl_to_target", "KL(target ‖ teacher)",
     "mean KL from the target sum_i r_i onehot(y_i) to the teacher's softmax on the mixed image, "
     "nats: how far the teacher's reading is from the intended mix"),
    ("top5_entropy", "teacher top-5 entropy",
     "mean entropy (nats) of the teacher's five largest probabilities, renormalised: the paper's "
     "Fig. 7 measure of how smooth the labels are"),
)


@torch.no_grad()
def mixed_set_statistics(path: str | os.PathLike, chunk: int = 4096) -> dict[str, float]:
    """The :data:`SET_MEASURES` of a set written by ``supermix generate``, plus ``n``.

    The mask sparsity term is computed on the image grid from the stored mask logits (SuperMix,
    sigmoid-normalised and upsampled as eq. 4 mixes them), from ``r`` for MixUp (every pixel
    mixes all sources with weights r) and is 0 for CutMix (each pixel from one source).
    """
    from ..kernels import mask_sparsity, normalised_masks
    from ..mixed_set import MixedDataset
    from ..mixers import MIXERS

    ds = MixedDataset(path, verify=False)
    if len(ds) == 0:
        raise ValueError(f"mixed_set_statistics: the set in {path} is empty")
    mixer = (ds.manifest.get("config") or {}).get("mixer", "supermix")
    solves = MIXERS[mixer].solves
    iters = ds.read_field("iters")
    r = ds.read_field("r").float()
    y_hat = ds.read_field("y_hat").float()
    probs = ds.read_field("teacher_probs").float()
    height, width = ds.read_field("mixed")[:1].shape[-2:]
    if solves:
        logits = ds.read_field("mask_logits").float()
        sparsity = torch.cat([
            mask_sparsity(normalised_masks(logits[i:i + chunk], (height, width)))
            for i in range(0, logits.shape[0], chunk)])
    elif mixer == "mixup":
        sparsity = (r * (1 - r)).mean(1)
    else:
        sparsity = torch.zeros(r.shape[0])
    # KL(y || p) with 0 log 0 = 0; the teacher's softmax is clamped so that log p is finite.
    log_ratio = torch.where(y_hat > 0, y_hat.clamp_min(1e-30).log()
                            - probs.clamp_min(1e-30).log(), torch.zeros_like(y_hat))
    kl = (y_hat * log_ratio).sum(1)
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).values
    top5 = top5 / top5.sum(1, keepdim=True)
    entropy = -(top5 * top5.clamp_min(1e-30).log()).sum(1)
    return {
        "n": int(iters.shape[0]),
        "zero_iters": float((iters == 0).float().mean()),
        "mask_sparsity": float(sparsity.mean()),
        "kl_to_target": float(kl.mean()),
        "top5_entropy": float(entropy.mean()),
    }
