"""Triton kernels of the three SuperMix ops, registered as torch custom ops.

Ops (namespace ``supermix``), callable as ``torch.ops.supermix.<name>`` once this package is
imported with ``AVAILABLE`` true:

- ``mix_triton(Tensor images, Tensor logits) -> (Tensor mixed, Tensor sparsity)``
- ``mix_backward_triton(Tensor grad_mixed, Tensor grad_sparsity, Tensor images, Tensor logits,
  bool need_images_grad) -> (Tensor grad_images, Tensor grad_logits)``
- ``gaussian_smooth_triton(Tensor grad, float sigma) -> Tensor``
- ``newton_step_triton(Tensor logits, Tensor grad, Tensor loss, Tensor active, float sigma)
  -> Tensor``

On a GPU they are ``torch.library.triton_op`` ops, so ``torch.compile`` traces into the
kernels. Under the interpreter (``TRITON_INTERPRET=1`` before triton is imported; CPU tensors)
they are opaque ``custom_op`` ops with shape-only fake kernels. Without triton, or with neither
a GPU nor the interpreter, the package still imports: ``AVAILABLE`` is false,
``UNAVAILABLE_REASON`` says why, no op is registered and the functions below raise.
Autograd for ``mix_triton`` is registered by ``supermix_ext.ops``, not here.
"""
from __future__ import annotations

from ._common import AVAILABLE, INTERPRETED, UNAVAILABLE_REASON

__all__ = [
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "INTERPRETED",
    "mix_triton",
    "mix_backward_triton",
    "gaussian_smooth_triton",
    "newton_step_triton",
]

if AVAILABLE:
    from .gaussian_smooth import gaussian_smooth_triton
    from .mix import mix_backward_triton, mix_triton
    from .newton_step import newton_step_triton
else:

    def _unavailable(name: str):
        def fn(*args, **kwargs):
            raise RuntimeError(f"supermix_ext.triton.{name} is unavailable: {UNAVAILABLE_REASON}")

        fn.__name__ = fn.__qualname__ = name
        return fn

    mix_triton = _unavailable("mix_triton")
    mix_backward_triton = _unavailable("mix_backward_triton")
    gaussian_smooth_triton = _unavailable("gaussian_smooth_triton")
    newton_step_triton = _unavailable("newton_step_triton")
