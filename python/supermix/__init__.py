"""supermix: SuperMix mixing augmentation (Dabouei et al., CVPR 2021) on fast fused kernels.

``supermix.solve`` is Algorithm 1 (and the Table 4 baselines); ``SuperMix``, ``MixUp`` and
``CutMix`` are batch mixers with one calling convention (``x_mix, y_mix = mixer(x, y)``, soft
labels for ``soft_target_cross_entropy``). The kernels live in ``supermix_ext``.
"""
from supermix.config import SolverConfig
from supermix.losses import soft_target_cross_entropy
from supermix.mixers import CutMix, MixUp, SuperMix, create_mixer
from supermix.solver import METHODS, MixResult, SolveState, solve

__all__ = ["CutMix", "METHODS", "MixResult", "MixUp", "SolveState", "SolverConfig", "SuperMix",
           "create_mixer", "soft_target_cross_entropy", "solve"]
__version__ = "0.1.0"
