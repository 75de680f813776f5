// gaussian_smooth on CUDA: one thread per element, a row pass into a scratch tensor, then a
// column pass. Mirrors cpu/gaussian_smooth_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cuda_utils.cuh"

namespace supermix {
namespace {

constexpr int kThreads = 256;

// out[n, y, x] = sum_t taps[t + radius] * in[n, y, x + t] (rows) or in[n, y + t, x] (columns),
// zero outside the plane.
template <typename acc_t, bool kAlongRows>
__global__ void filter_kernel(const acc_t* __restrict__ in, acc_t* __restrict__ out, const acc_t* __restrict__ taps,
                              int64_t radius, int64_t total, int64_t h, int64_t w) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t x = index % w;
  const int64_t y = (index / w) % h;
  const int64_t position = kAlongRows ? x : y;
  const int64_t length = kAlongRows ? w : h;
  const int64_t stride = kAlongRows ? 1 : w;
  const int64_t t_begin = position - radius < 0 ? -position : -radius;
  const int64_t t_end = position + radius > length - 1 ? length - 1 - position : radius;
  acc_t acc = 0;
  for (int64_t t = t_begin; t <= t_end; ++t) acc += taps[t + radius] * in[index + t * stride];
  out[index] = acc;
}

}  // namespace

// The Gaussian taps (see common.h) as a tensor of `options`, for the kernels to read.
at::Tensor gaussian_taps_tensor(double sigma, int64_t h, int64_t w, const at::TensorOptions& options) {
  const std::vector<double> taps = gaussian_taps(sigma, std::max<int64_t>(h, w) - 1);
  return at::tensor(taps, at::TensorOptions().dtype(at::kDouble)).to(options);
}

at::Tensor gaussian_smooth_cuda(const at::Tensor& grad_in, double sigma) {
  check_smooth_inputs("supermix::gaussian_smooth", grad_in, sigma);
  const c10::cuda::OptionalCUDAGuard device_guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  if (gaussian_radius(sigma) == 0 || grad.numel() == 0) {
    return grad.clone();  // floor(2.5 sigma) = 0: the single tap 1, the identity
  }
  const int64_t h = grad.size(1), w = grad.size(2);
  const at::Tensor taps = gaussian_taps_tensor(sigma, h, w, grad.options());
  const int64_t radius = (taps.numel() - 1) / 2;
  at::Tensor rows = at::empty_like(grad);
  at::Tensor out = at::empty_like(grad);
  const int64_t total = grad.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "supermix::gaussian_smooth_cuda", [&] {
    const int64_t blocks = cuda::ceil_div(total, kThreads);
    filter_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), rows.mutable_data_ptr<scalar_t>(), taps.const_data_ptr<scalar_t>(), radius,
        total, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    filter_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
        rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), taps.const_data_ptr<scalar_t>(), radius,
        total, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(supermix, CUDA, m) {
  m.impl("gaussian_smooth", &gaussian_smooth_cuda);
}

}  // namespace supermix
