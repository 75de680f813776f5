// The one schema registry of the supermix ops. Kernels live in cpu/<op>_cpu.cpp and
// cuda/<op>_cuda.cu, each registering itself with TORCH_LIBRARY_IMPL for its device; fake
// kernels and autograd are registered from Python (supermix_ext/ops.py).
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

#ifdef SUPERMIX_PYTHON_MODULE
#include <Python.h>

// An empty module, so that `import supermix_ext._C` loads this library (and with it the
// TORCH_LIBRARY registrations below) like any extension module.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "supermix compiled kernels; the ops are under torch.ops.supermix",
      -1,    // per-interpreter state size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
#endif

namespace supermix {

// CUDA_VERSION this library was compiled with (e.g. 13000), or -1 for a CPU-only build;
// supermix_ext compares it with torch.version.cuda at import.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

TORCH_LIBRARY(supermix, m) {
  // images [B,k,C,H,W], logits [B,k,h,w] -> mixed [B,C,H,W] (images' dtype),
  // sparsity [B] (logits' dtype). The forward is deterministic on every device; `deterministic`
  // is carried to the backward by the autograd registration (supermix_ext/ops.py).
  m.def("mix(Tensor images, Tensor logits, bool deterministic=False) -> (Tensor, Tensor)");
  // -> grad_images [B,k,C,H,W] (or an empty [0] tensor when need_images_grad is false),
  //    grad_logits [B,k,h,w]. deterministic (or torch.use_deterministic_algorithms): an ordered
  //    reduction onto the grid instead of float atomics where a device kernel uses atomics (CUDA);
  //    the CPU kernel is deterministic either way.
  m.def(
      "mix_backward(Tensor grad_mixed, Tensor grad_sparsity, Tensor images, Tensor logits, "
      "bool need_images_grad, bool deterministic=False) -> (Tensor, Tensor)");
  // grad [N,h,w] -> [N,h,w], separable Gaussian with zero padding.
  m.def("gaussian_smooth(Tensor grad, float sigma) -> Tensor");
  // Smooth-projection Newton step (paper eq. 7) -> new logits [B,k,h,w].
  m.def("newton_step(Tensor logits, Tensor grad, Tensor loss, Tensor active, float sigma) -> Tensor");
  m.def("cuda_version() -> int", &cuda_version);
}

}  // namespace supermix
