// Small CUDA helpers shared by the kernels in this folder.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"

namespace supermix {
namespace cuda {

constexpr int kWarpSize = 32;
// Shared memory a kernel may use without opting in to more (every architecture since sm_20).
constexpr int64_t kSharedMemoryBytes = 48 * 1024;
// gridDim.y is limited to 65535: larger batches loop over the samples.
constexpr int64_t kMaxGridY = 65535;
// gridDim.x is limited to 2^31 - 1.
constexpr int64_t kMaxGridX = 2147483647;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Sum of `value` over the block, returned to every thread. `scratch` holds blockDim.x / 32
// elements of shared memory; blockDim.x must be a multiple of 32. Every thread must call it.
template <typename acc_t>
__device__ inline acc_t block_sum(acc_t value, acc_t* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  acc_t total = 0;
  for (int i = 0; i < num_warps; ++i) total += scratch[i];  // fixed order: every thread agrees
  return total;
}

// taps[j] = gaussian_tap(spec, j) for the 2 * spec.kept + 1 central taps, computed by the block
// into shared memory; ends with a barrier. Every thread must call it.
template <typename acc_t>
__device__ inline void load_gaussian_taps(acc_t* taps, const GaussianSpec& spec) {
  for (int64_t j = threadIdx.x; j < 2 * spec.kept + 1; j += blockDim.x) {
    taps[j] = static_cast<acc_t>(gaussian_tap(spec, j));
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace supermix
