// gaussian_smooth on CUDA: one thread per element, a row pass into a scratch tensor, then a
// column pass. The taps are evaluated by each block from a GaussianSpec passed by value (no
// host-to-device copy, so the op can be captured in a CUDA graph). Mirrors
// cpu/gaussian_smooth_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../common.h"
#include "cuda_utils.cuh"

namespace supermix {
namespace {

constexpr int kThreads = 256;

// out[n, y, x] = sum_t taps[t + kept] * in[n, y, x + t] (rows) or in[n, y + t, x] (columns),
// zero outside the plane.
template <typename acc_t, bool kAlongRows>
__global__ void filter_kernel(const acc_t* __restrict__ in, acc_t* __restrict__ out, GaussianSpec spec,
                              int64_t total, int64_t h, int64_t w) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* taps = reinterpret_cast<acc_t*>(shared_raw);  // 2 * spec.kept + 1
  cuda::load_gaussian_taps(taps, spec);
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t x = index % w;
  const int64_t y = (index / w) % h;
  const int64_t stride = kAlongRows ? 1 : w;
  const TapRange range = filter_tap_range(kAlongRows ? x : y, spec.kept, kAlongRows ? w : h);
  acc_t acc = 0;
  for (int64_t t = range.begin; t <= range.end; ++t) acc += taps[t + spec.kept] * in[index + t * stride];
  out[index] = acc;
}

}  // namespace

at::Tensor gaussian_smooth_cuda(const at::Tensor& grad_in, double sigma) {
  check_smooth_inputs("supermix::gaussian_smooth", grad_in, sigma);
  const c10::cuda::OptionalCUDAGuard device_guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  if (gaussian_radius(sigma) == 0 || grad.numel() == 0) {
    return grad.clone();  // floor(2.5 sigma) = 0: the single tap 1, the identity
  }
  const int64_t h = grad.size(1), w = grad.size(2);
  const GaussianSpec spec = gaussian_spec(sigma, std::max<int64_t>(h, w) - 1);
  at::Tensor rows = at::empty_like(grad);
  at::Tensor out = at::empty_like(grad);
  const int64_t total = grad.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "supermix::gaussian_smooth_cuda", [&] {
    const int64_t taps_bytes = (2 * spec.kept + 1) * sizeof(scalar_t);
    TORCH_CHECK(taps_bytes <= cuda::kSharedMemoryBytes, "supermix::gaussian_smooth: sigma=", sigma,
                " needs more Gaussian taps than fit in shared memory");
    const int64_t blocks = cuda::ceil_div(total, kThreads);
    TORCH_CHECK(blocks <= cuda::kMaxGridX, "supermix::gaussian_smooth: ", total, " elements exceed CUDA's grid limit");
    filter_kernel<scalar_t, true><<<blocks, kThreads, taps_bytes, stream>>>(
        grad.const_data_ptr<scalar_t>(), rows.mutable_data_ptr<scalar_t>(), spec, total, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    filter_kernel<scalar_t, false><<<blocks, kThreads, taps_bytes, stream>>>(
        rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), spec, total, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(supermix, CUDA, m) {
  m.impl("gaussian_smooth", &gaussian_smooth_cuda);
}

}  // namespace supermix
