// newton_step on CUDA: one block per sample, one fused pass (smooth each gradient plane through
// shared memory, block-reduce the dot product in a fixed order, clamp the step, update). The
// taps come as a GaussianSpec by value and nothing is copied from the host, so the op can be
// captured in a CUDA graph. Mirrors cpu/newton_step_cpu.cpp.
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

// Block b: the smoothed gradient is written into out_b, then turned into the update in place.
// `row_scratch` is null when the h x w row-pass plane fits in shared memory, else a global
// [gridDim.x][h*w] buffer.
template <typename acc_t>
__global__ void newton_step_kernel(const acc_t* __restrict__ logits, const acc_t* __restrict__ grad,
                                   const acc_t* __restrict__ loss, const bool* __restrict__ active,
                                   GaussianSpec spec, acc_t* __restrict__ out,
                                   acc_t* row_scratch, int64_t B, int64_t k, int64_t h, int64_t w) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* reduce_scratch = reinterpret_cast<acc_t*>(shared_raw);  // blockDim.x / 32
  acc_t* taps = reduce_scratch + blockDim.x / cuda::kWarpSize;   // 2 * radius + 1
  const int64_t radius = spec.kept;
  acc_t* rows = row_scratch != nullptr ? row_scratch + blockIdx.x * h * w : taps + 2 * radius + 1;
  const int64_t plane = h * w, sample = k * plane;
  const int64_t t0 = threadIdx.x, T = blockDim.x;
  cuda::load_gaussian_taps(taps, spec);

  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const acc_t* logits_b = logits + b * sample;
    acc_t* out_b = out + b * sample;
    if (!active[b]) {
      for (int64_t j = t0; j < sample; j += T) out_b[j] = logits_b[j];
      continue;  // the branch is uniform over the block
    }
    const acc_t* grad_b = grad + b * sample;
    acc_t dot = 0;
    for (int64_t i = 0; i < k; ++i) {
      const acc_t* g = grad_b + i * plane;
      for (int64_t j = t0; j < plane; j += T) {
        const TapRange range = filter_tap_range(j % w, radius, w);
        acc_t acc = 0;
        for (int64_t t = range.begin; t <= range.end; ++t) acc += taps[t + radius] * g[j + t];
        rows[j] = acc;
      }
      __syncthreads();
      for (int64_t j = t0; j < plane; j += T) {
        const TapRange range = filter_tap_range(j / w, radius, h);
        acc_t acc = 0;
        for (int64_t t = range.begin; t <= range.end; ++t) acc += taps[t + radius] * rows[j + t * w];
        out_b[i * plane + j] = acc;
        dot += acc * g[j];
      }
      __syncthreads();  // rows is rewritten by the next plane
    }
    // block_sum ends with a barrier, after which every thread sees the whole smoothed sample.
    const acc_t step = newton_step_size<acc_t>(loss[b], cuda::block_sum<acc_t>(dot, reduce_scratch));
    for (int64_t j = t0; j < sample; j += T) out_b[j] = logits_b[j] - step * out_b[j];
    __syncthreads();  // reduce_scratch and rows are reused by the next sample
  }
}

}  // namespace

at::Tensor newton_step_cuda(const at::Tensor& logits_in, const at::Tensor& grad_in, const at::Tensor& loss_in,
                            const at::Tensor& active_in, double sigma) {
  check_newton_inputs("supermix::newton_step", logits_in, grad_in, loss_in, active_in, sigma);
  const c10::cuda::OptionalCUDAGuard device_guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  // The step is computed in the logits' dtype, as the reference does (loss.to(logits.dtype)).
  const at::Tensor loss = loss_in.to(logits.scalar_type()).contiguous();
  const at::Tensor active = active_in.contiguous();
  const int64_t B = logits.size(0), k = logits.size(1), h = logits.size(2), w = logits.size(3);
  at::Tensor out = at::empty_like(logits);
  if (out.numel() == 0) {
    return out;
  }
  const GaussianSpec spec = gaussian_spec(sigma, std::max<int64_t>(h, w) - 1);
  const int64_t num_taps = 2 * spec.kept + 1;
  const int64_t blocks = std::min(B, int64_t(65535));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::newton_step_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t fixed = (kThreads / cuda::kWarpSize + num_taps) * sizeof(acc_t);
    const int64_t plane_bytes = h * w * sizeof(acc_t);
    const bool shared_rows = fixed + plane_bytes <= cuda::kSharedMemoryBytes;
    TORCH_CHECK(fixed <= cuda::kSharedMemoryBytes, "supermix::newton_step: sigma=", sigma,
                " needs more Gaussian taps than fit in shared memory");
    at::Tensor row_scratch;
    if (!shared_rows) row_scratch = at::empty({blocks, h * w}, logits.options());
    newton_step_kernel<acc_t><<<blocks, kThreads, fixed + (shared_rows ? plane_bytes : 0), stream>>>(
        logits.const_data_ptr<acc_t>(), grad.const_data_ptr<acc_t>(), loss.const_data_ptr<acc_t>(),
        active.const_data_ptr<bool>(), spec, out.mutable_data_ptr<acc_t>(),
        shared_rows ? nullptr : row_scratch.mutable_data_ptr<acc_t>(), B, k, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(supermix, CUDA, m) {
  m.impl("newton_step", &newton_step_cuda);
}

}  // namespace supermix
