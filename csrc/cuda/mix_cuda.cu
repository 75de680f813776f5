// mix and mix_backward on CUDA: one thread per output pixel, grid over (pixel tiles, samples).
// The masks live in registers and shared memory only; the backward reduces onto the h x w grid
// in shared memory (the band of grid rows a tile reads) before one atomicAdd per cell.
// Mirrors cpu/mix_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "../common.h"
#include "cuda_utils.cuh"

namespace supermix {
namespace {

constexpr int kMaxThreads = 256;

// Threads per block such that `per_thread_bytes` of shared memory per thread (plus `fixed_bytes`)
// fits; a multiple of the warp size, at least one warp.
int64_t block_size_for(int64_t per_thread_bytes, int64_t fixed_bytes, const char* op, const MixShape& s) {
  int64_t threads = kMaxThreads;
  while (threads > cuda::kWarpSize && fixed_bytes + threads * per_thread_bytes > cuda::kSharedMemoryBytes) {
    threads /= 2;
  }
  TORCH_CHECK(fixed_bytes + threads * per_thread_bytes <= cuda::kSharedMemoryBytes, op,
              ": k=", s.k, " sources need more shared memory per pixel than the CUDA kernel has");
  return threads;
}

// z_i at output pixel (y, x): the bilinear blend of the 4 grid cells, y weight applied last.
template <typename acc_t>
__device__ inline acc_t upsampled_logit(const acc_t* plane, int64_t w, const LinearTap<acc_t>& ty,
                                        const LinearTap<acc_t>& tx) {
  const acc_t* top = plane + ty.i0 * w;
  const acc_t* bottom = plane + ty.i1 * w;
  return ty.w0 * (tx.w0 * top[tx.i0] + tx.w1 * top[tx.i1]) + ty.w1 * (tx.w0 * bottom[tx.i0] + tx.w1 * bottom[tx.i1]);
}

template <typename scalar_t, typename acc_t>
__global__ void mix_forward_kernel(const scalar_t* __restrict__ images, const acc_t* __restrict__ logits,
                                   scalar_t* __restrict__ mixed, acc_t* __restrict__ sparsity, int64_t B, int64_t k,
                                   int64_t C, int64_t H, int64_t W, int64_t h, int64_t w, acc_t inv_count) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* reduce_scratch = reinterpret_cast<acc_t*>(shared_raw);   // blockDim.x / 32
  acc_t* mask = reduce_scratch + blockDim.x / cuda::kWarpSize;  // [k][blockDim.x]
  const int64_t HW = H * W;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = p < HW;
  const int64_t y = valid ? p / W : 0, x = valid ? p % W : 0;
  const LinearTap<acc_t> ty = linear_tap<acc_t>(y, h, H);
  const LinearTap<acc_t> tx = linear_tap<acc_t>(x, w, W);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    acc_t partial = 0;
    if (valid) {
      acc_t total = 0;
      for (int64_t i = 0; i < k; ++i) {
        const acc_t s = sigmoid<acc_t>(upsampled_logit<acc_t>(logits + (b * k + i) * h * w, w, ty, tx));
        mask[i * blockDim.x + threadIdx.x] = s;
        total += s;
      }
      for (int64_t i = 0; i < k; ++i) {
        const acc_t m = mask[i * blockDim.x + threadIdx.x] / total;
        mask[i * blockDim.x + threadIdx.x] = m;
        partial += sparsity_term<acc_t>(m);
      }
      for (int64_t c = 0; c < C; ++c) {
        acc_t out = 0;
        for (int64_t i = 0; i < k; ++i) {
          out += mask[i * blockDim.x + threadIdx.x] * static_cast<acc_t>(images[((b * k + i) * C + c) * HW + p]);
        }
        mixed[(b * C + c) * HW + p] = static_cast<scalar_t>(out);
      }
    }
    const acc_t block_total = cuda::block_sum<acc_t>(partial, reduce_scratch);
    if (threadIdx.x == 0) atomicAdd(sparsity + b, block_total * inv_count);
  }
}

// Grid rows [first, first + rows) read by the output pixels [p0, p0 + threads) of a tile.
template <typename acc_t>
__host__ __device__ inline void tile_band(int64_t p0, int64_t threads, const MixShape& s, int64_t* first,
                                          int64_t* rows) {
  const int64_t y_first = p0 / s.W;
  const int64_t p_end = p0 + threads < s.H * s.W ? p0 + threads : s.H * s.W;
  const int64_t y_last = p_end - 1;
  *first = linear_tap<acc_t>(y_first, s.h, s.H).i0;
  *rows = linear_tap<acc_t>(y_last / s.W, s.h, s.H).i1 - *first + 1;
}

template <typename scalar_t, typename acc_t>
__global__ void mix_backward_kernel(const scalar_t* __restrict__ grad_mixed, const acc_t* __restrict__ grad_sparsity,
                                    const scalar_t* __restrict__ images, const acc_t* __restrict__ logits,
                                    scalar_t* __restrict__ grad_images, acc_t* __restrict__ grad_logits, MixShape s,
                                    acc_t inv_count, bool shared_grid) {
  extern __shared__ unsigned char shared_raw[];
  const int64_t k = s.k, C = s.C, H = s.H, W = s.W, h = s.h, w = s.w;
  acc_t* sig = reinterpret_cast<acc_t*>(shared_raw);  // [k][blockDim.x]
  acc_t* G = sig + k * blockDim.x;                     // [k][blockDim.x]: dL/dm_i, then dL/dz_i
  acc_t* band_grad = G + k * blockDim.x;               // [k][band_rows][w] when shared_grid
  const int64_t HW = H * W;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * blockDim.x;
  const int64_t p = p0 + threadIdx.x;
  const bool valid = p < HW;
  const int64_t y = valid ? p / W : 0, x = valid ? p % W : 0;
  const LinearTap<acc_t> ty = linear_tap<acc_t>(y, h, H);
  const LinearTap<acc_t> tx = linear_tap<acc_t>(x, w, W);
  int64_t band_first = 0, band_rows = h;
  if (shared_grid) tile_band<acc_t>(p0, blockDim.x, s, &band_first, &band_rows);
  const int64_t band_size = k * band_rows * w;
  const int64_t t = threadIdx.x, T = blockDim.x;

  for (int64_t b = blockIdx.y; b < s.B; b += gridDim.y) {
    acc_t* grid_b = grad_logits + b * k * h * w;
    if (shared_grid) {
      for (int64_t j = t; j < band_size; j += T) band_grad[j] = 0;
      __syncthreads();
    }
    if (valid) {
      acc_t total = 0;
      for (int64_t i = 0; i < k; ++i) {
        const acc_t sv = sigmoid<acc_t>(upsampled_logit<acc_t>(logits + (b * k + i) * h * w, w, ty, tx));
        sig[i * T + t] = sv;
        total += sv;
      }
      const acc_t sparsity_coef = grad_sparsity[b] * inv_count;
      acc_t g_bar = 0;
      for (int64_t i = 0; i < k; ++i) {
        const acc_t m = sig[i * T + t] / total;
        acc_t g = sparsity_coef * sparsity_term_grad<acc_t>(m);
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gm = static_cast<acc_t>(grad_mixed[(b * C + c) * HW + p]);
          const int64_t offset = ((b * k + i) * C + c) * HW + p;
          g += gm * static_cast<acc_t>(images[offset]);
          if (grad_images != nullptr) grad_images[offset] = static_cast<scalar_t>(gm * m);
        }
        G[i * T + t] = g;
        g_bar += m * g;
      }
      for (int64_t i = 0; i < k; ++i) {
        const acc_t sv = sig[i * T + t];
        const acc_t m = sv / total;
        const acc_t dz = m * (acc_t(1) - sv) * (G[i * T + t] - g_bar);
        // Adjoint of the bilinear upsample: the 4 cells this pixel read (at the border y0 == y1
        // or x0 == x1, and both weights land in the same cell).
        acc_t* top = shared_grid ? band_grad + (i * band_rows + ty.i0 - band_first) * w : grid_b + (i * h + ty.i0) * w;
        acc_t* bottom = top + (ty.i1 - ty.i0) * w;
        atomicAdd(top + tx.i0, ty.w0 * tx.w0 * dz);
        atomicAdd(top + tx.i1, ty.w0 * tx.w1 * dz);
        atomicAdd(bottom + tx.i0, ty.w1 * tx.w0 * dz);
        atomicAdd(bottom + tx.i1, ty.w1 * tx.w1 * dz);
      }
    }
    if (shared_grid) {
      __syncthreads();
      for (int64_t j = t; j < band_size; j += T) {
        const acc_t value = band_grad[j];
        if (value != acc_t(0)) {
          const int64_t i = j / (band_rows * w), rest = j % (band_rows * w);
          atomicAdd(grid_b + (i * h + band_first) * w + rest, value);
        }
      }
      __syncthreads();  // band_grad is reset for the next sample
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mix_cuda(const at::Tensor& images_in, const at::Tensor& logits_in) {
  const MixShape s = check_mix_inputs("supermix::mix", images_in, logits_in);
  const c10::cuda::OptionalCUDAGuard device_guard(images_in.device());
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mixed = at::empty({s.B, s.C, s.H, s.W}, images.options());
  at::Tensor sparsity = at::zeros({s.B}, logits.options());
  if (s.B == 0) {
    return {mixed, sparsity};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t threads = block_size_for(s.k * sizeof(acc_t), kMaxThreads / cuda::kWarpSize * sizeof(acc_t),
                                           "supermix::mix", s);
    const int64_t shared = (threads / cuda::kWarpSize + s.k * threads) * sizeof(acc_t);
    const dim3 grid(cuda::ceil_div(s.H * s.W, threads), std::min(s.B, cuda::kMaxGridY));
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.k * s.H * s.W);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_cuda", [&] {
      mix_forward_kernel<scalar_t, acc_t><<<grid, threads, shared, stream>>>(
          images.const_data_ptr<scalar_t>(), logits.const_data_ptr<acc_t>(), mixed.mutable_data_ptr<scalar_t>(),
          sparsity.mutable_data_ptr<acc_t>(), s.B, s.k, s.C, s.H, s.W, s.h, s.w, inv_count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {mixed, sparsity};
}

std::tuple<at::Tensor, at::Tensor> mix_backward_cuda(const at::Tensor& grad_mixed_in,
                                                     const at::Tensor& grad_sparsity_in, const at::Tensor& images_in,
                                                     const at::Tensor& logits_in, bool need_images_grad) {
  const MixShape s =
      check_mix_backward_inputs("supermix::mix_backward", grad_mixed_in, grad_sparsity_in, images_in, logits_in);
  const c10::cuda::OptionalCUDAGuard device_guard(images_in.device());
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_mixed = grad_mixed_in.to(images.scalar_type()).contiguous();
  const at::Tensor grad_sparsity = grad_sparsity_in.to(logits.scalar_type()).contiguous();
  at::Tensor grad_images =
      need_images_grad ? at::empty(images.sizes(), images.options()) : at::empty({0}, images.options());
  at::Tensor grad_logits = at::zeros(logits.sizes(), logits.options());
  if (s.B == 0) {
    return {grad_images, grad_logits};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_backward_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t threads = block_size_for(2 * s.k * sizeof(acc_t), 0, "supermix::mix_backward", s);
    // The largest band of grid rows any tile reads decides whether the grid fits in shared memory.
    int64_t max_band_rows = 0;
    for (int64_t p0 = 0; p0 < s.H * s.W; p0 += threads) {
      int64_t first = 0, rows = 0;
      tile_band<acc_t>(p0, threads, s, &first, &rows);
      max_band_rows = std::max(max_band_rows, rows);
    }
    const int64_t per_pixel = 2 * s.k * threads * sizeof(acc_t);
    const int64_t band_bytes = s.k * max_band_rows * s.w * sizeof(acc_t);
    const bool shared_grid = per_pixel + band_bytes <= cuda::kSharedMemoryBytes;
    const int64_t shared = per_pixel + (shared_grid ? band_bytes : 0);
    const dim3 grid(cuda::ceil_div(s.H * s.W, threads), std::min(s.B, cuda::kMaxGridY));
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.k * s.H * s.W);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_backward_cuda",
                                    [&] {
                                      mix_backward_kernel<scalar_t, acc_t><<<grid, threads, shared, stream>>>(
                                          grad_mixed.const_data_ptr<scalar_t>(), grad_sparsity.const_data_ptr<acc_t>(),
                                          images.const_data_ptr<scalar_t>(), logits.const_data_ptr<acc_t>(),
                                          need_images_grad ? grad_images.mutable_data_ptr<scalar_t>() : nullptr,
                                          grad_logits.mutable_data_ptr<acc_t>(), s, inv_count, shared_grid);
                                      C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    });
  });
  return {grad_images, grad_logits};
}

TORCH_LIBRARY_IMPL(supermix, CUDA, m) {
  m.impl("mix", &mix_cuda);
  m.impl("mix_backward", &mix_backward_cuda);
}

}  // namespace supermix
