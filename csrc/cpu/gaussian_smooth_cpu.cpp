// gaussian_smooth on the CPU: one plane per task, rows then columns. Mirrors
// cuda/gaussian_smooth_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cpu_math.h"

namespace supermix {

at::Tensor gaussian_smooth_cpu(const at::Tensor& grad_in, double sigma) {
  check_smooth_inputs("supermix::gaussian_smooth", grad_in, sigma);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t N = grad.size(0), h = grad.size(1), w = grad.size(2);
  const std::vector<double> taps64 = gaussian_taps(sigma, std::max<int64_t>(h, w) - 1);
  const int64_t radius = (static_cast<int64_t>(taps64.size()) - 1) / 2;
  if (gaussian_radius(sigma) == 0 || grad.numel() == 0) {
    return grad.clone();  // floor(2.5 sigma) = 0: the single tap 1, the identity
  }
  at::Tensor out = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "supermix::gaussian_smooth_cpu", [&] {
    const std::vector<scalar_t> taps(taps64.begin(), taps64.end());
    const scalar_t* in = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t plane = h * w;
    at::parallel_for(0, N, std::max<int64_t>(1, 8192 / plane), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tmp(plane), padded(w + 2 * radius, scalar_t(0));
      for (int64_t n = begin; n < end; ++n) {
        cpu::smooth_plane<scalar_t>(in + n * plane, tmp.data(), dst + n * plane, h, w, taps.data(), radius, padded.data());
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(supermix, CPU, m) {
  m.impl("gaussian_smooth", &gaussian_smooth_cpu);
}

}  // namespace supermix
