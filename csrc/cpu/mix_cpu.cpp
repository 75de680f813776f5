// mix and mix_backward on the CPU: argument checks, outputs, and the choice between the
// baseline and the AVX2 build of the kernels in mix_cpu_kernels.h. Mirrors cuda/mix_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cpu_math.h"
#include "huge_pages.h"

#define SUPERMIX_CPU_ISA base
#include "mix_cpu_kernels.h"
#undef SUPERMIX_CPU_ISA

namespace supermix {

#if SUPERMIX_CPU_AVX2
// Defined in mix_cpu_avx2.cpp.
namespace avx2 {
void mix_forward(const at::Tensor& images, const at::Tensor& logits, const at::Tensor& mixed,
                 const at::Tensor& row_sparsity, const MixShape& s);
void mix_backward(const at::Tensor& grad_mixed, const at::Tensor& grad_sparsity, const at::Tensor& images,
                  const at::Tensor& logits, const at::Tensor& grad_images, const at::Tensor& grad_logits,
                  const MixShape& s);
}  // namespace avx2
#endif

namespace {

// The AVX2 kernels run where the CPU has AVX2 and FMA; SUPERMIX_CPU_ISA_BASE=1 forces the baseline.
bool use_avx2() {
#if SUPERMIX_CPU_AVX2
  static const bool available = [] {
    const char* force_base = std::getenv("SUPERMIX_CPU_ISA_BASE");
    if (force_base != nullptr && force_base[0] == '1') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return available;
#else
  return false;
#endif
}

}  // namespace

// The CPU kernels are deterministic whatever `deterministic` says: every reduction has a fixed
// order that depends on the shape alone, not on the thread count.
std::tuple<at::Tensor, at::Tensor> mix_cpu(const at::Tensor& images_in, const at::Tensor& logits_in,
                                           bool /*deterministic*/) {
  const MixShape s = check_mix_inputs("supermix::mix", images_in, logits_in);
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mixed = at::empty({s.B, s.C, s.H, s.W}, images.options());
  cpu::advise_huge_pages(mixed);
  at::Tensor sparsity = at::empty({s.B}, logits.options());
  if (s.B == 0) {
    return {mixed, sparsity};
  }
  const at::Tensor row_sparsity = at::empty({s.B * s.H}, logits.options());
#if SUPERMIX_CPU_AVX2
  if (use_avx2()) {
    avx2::mix_forward(images, logits, mixed, row_sparsity, s);
  } else
#endif
  {
    base::mix_forward(images, logits, mixed, row_sparsity, s);
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_cpu", [&] {
    const scalar_t* rows = row_sparsity.const_data_ptr<scalar_t>();
    scalar_t* out = sparsity.mutable_data_ptr<scalar_t>();
    const scalar_t count = static_cast<scalar_t>(s.k * s.H * s.W);
    for (int64_t b = 0; b < s.B; ++b) {
      scalar_t total = 0;
      for (int64_t y = 0; y < s.H; ++y) total += rows[b * s.H + y];
      out[b] = total / count;
    }
  });
  return {mixed, sparsity};
}

std::tuple<at::Tensor, at::Tensor> mix_backward_cpu(const at::Tensor& grad_mixed_in, const at::Tensor& grad_sparsity_in,
                                                    const at::Tensor& images_in, const at::Tensor& logits_in,
                                                    bool need_images_grad, bool /*deterministic*/) {
  const MixShape s =
      check_mix_backward_inputs("supermix::mix_backward", grad_mixed_in, grad_sparsity_in, images_in, logits_in);
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_mixed = grad_mixed_in.to(images.scalar_type()).contiguous();
  const at::Tensor grad_sparsity = grad_sparsity_in.to(logits.scalar_type()).contiguous();
  at::Tensor grad_images = need_images_grad ? at::empty(images.sizes(), images.options())
                                            : at::empty({0}, images.options());
  cpu::advise_huge_pages(grad_images);
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());
  if (s.B == 0) {
    return {grad_images, grad_logits};
  }
  const at::Tensor images_grad_out = need_images_grad ? grad_images : at::Tensor();
#if SUPERMIX_CPU_AVX2
  if (use_avx2()) {
    avx2::mix_backward(grad_mixed, grad_sparsity, images, logits, images_grad_out, grad_logits, s);
  } else
#endif
  {
    base::mix_backward(grad_mixed, grad_sparsity, images, logits, images_grad_out, grad_logits, s);
  }
  return {grad_images, grad_logits};
}

TORCH_LIBRARY_IMPL(supermix, CPU, m) {
  m.impl("mix", &mix_cpu);
  m.impl("mix_backward", &mix_backward_cpu);
}

}  // namespace supermix
