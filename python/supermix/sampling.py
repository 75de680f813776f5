"""The solver's random draws: Dirichlet mixing weights (eq. 2) and each image's k-1 partners."""
from __future__ import annotations

import math

import torch

__all__ = ["sample_dirichlet", "cyclic_sources"]


def _standard_gamma(shape: tuple[int, ...], alpha: float, generator, device) -> torch.Tensor:
    """Gamma(alpha, 1) samples drawn with ``generator`` (Marsaglia and Tsang, 2000).

    torch's own gamma sampler takes no generator, so seeded runs could not be reproduced.
    """
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(shape, dtype=torch.float64, device=device)
    todo = torch.ones(shape, dtype=torch.bool, device=device)
    while bool(todo.any()):
        x = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo &= ~ok
    if boost:
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        out = out * u.pow(1.0 / alpha)
    return out


def sample_dirichlet(num: int, k: int, alpha: float, generator=None, device=None) -> torch.Tensor:
    """[num, k] float32 samples of the symmetric Dirichlet(alpha * 1_k) (paper eq. 2)."""
    device = generator.device if generator is not None else device
    g = _standard_gamma((num, k), float(alpha), generator, device)
    g = g.clamp_min(1e-300)
    return (g / g.sum(dim=1, keepdim=True)).float()


def cyclic_sources(n: int, k: int, generator=None, device=None) -> torch.Tensor:
    """[n, k] distinct source indices per row: k cyclic shifts of one random permutation."""
    device = generator.device if generator is not None else device
    perm = torch.randperm(n, generator=generator, device=device)
    shifts = (torch.arange(n, device=device).unsqueeze(1) + torch.arange(k, device=device)) % n
    return perm[shifts]
