"""supermix: SuperMix mixing augmentation (Dabouei et al., CVPR 2021) on fast fused kernels.

``supermix.solve`` is Algorithm 1 (and the Table 4 baselines); ``SuperMix``, ``MixUp`` and
``CutMix`` are batch mixers with one calling convention. The kernels live in ``supermix_ext``.
"""
from supermix.mixers import CutMix, MixUp, SuperMix, create_mixer
from supermix.solver import METHODS, MixResult, solve

__all__ = ["CutMix", "METHODS", "MixResult", "MixUp", "SuperMix", "create_mixer", "solve"]
__version__ = "0.1.0"
