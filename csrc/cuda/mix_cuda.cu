// mix and mix_backward on CUDA: one thread per output pixel, grid over (pixel tiles, samples).
// The masks live in registers and shared memory only. The forward's sparsity is summed per tile,
// then per sample in a fixed order, so it is bit-reproducible. The backward has two reductions
// onto the h x w grid: by default in shared memory (the band of grid rows a tile reads) then one
// float atomicAdd per cell, whose order varies from run to run; in deterministic mode
// (`deterministic=True` or torch.use_deterministic_algorithms) each pixel stores dL/dz_i and a
// second kernel gathers every cell in a fixed order (common.h bilinear_adjoint_at).
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

// Grid blocks along x, checked against the CUDA limit (2^31 - 1) instead of truncated into dim3.
unsigned int grid_x(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= cuda::kMaxGridX, op, ": ", blocks, " thread blocks exceed CUDA's grid limit");
  return static_cast<unsigned int>(blocks);
}

// z_i at output pixel (y, x): the bilinear blend of the 4 grid cells, y weight applied last.
template <typename acc_t>
__device__ inline acc_t upsampled_logit(const acc_t* plane, int64_t w, const LinearTap<acc_t>& ty,
                                        const LinearTap<acc_t>& tx) {
  const acc_t* top = plane + ty.i0 * w;
  const acc_t* bottom = plane + ty.i1 * w;
  return blend(ty.w0, blend(tx.w0, top[tx.i0], tx.w1, top[tx.i1]), ty.w1,
               blend(tx.w0, bottom[tx.i0], tx.w1, bottom[tx.i1]));
}

template <typename scalar_t, typename acc_t>
__global__ void mix_forward_kernel(const scalar_t* __restrict__ images, const acc_t* __restrict__ logits,
                                   scalar_t* __restrict__ mixed, acc_t* __restrict__ tile_sparsity, int64_t B, int64_t k,
                                   int64_t C, int64_t H, int64_t W, int64_t h, int64_t w) {
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
    if (threadIdx.x == 0) tile_sparsity[b * gridDim.x + blockIdx.x] = block_total;
  }
}

// sparsity[b] = sum over tiles of tile_sparsity[b][tile] * inv_count, one block per sample, the
// same order every run (in place of one float atomicAdd per tile).
template <typename acc_t>
__global__ void sum_tiles_kernel(const acc_t* __restrict__ tile_sparsity, acc_t* __restrict__ sparsity, int64_t B,
                                 int64_t tiles, acc_t inv_count) {
  __shared__ acc_t reduce_scratch[kMaxThreads / cuda::kWarpSize];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    acc_t partial = 0;
    for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) partial += tile_sparsity[b * tiles + t];
    const acc_t total = cuda::block_sum<acc_t>(partial, reduce_scratch);
    if (threadIdx.x == 0) sparsity[b] = total * inv_count;
  }
}

// kOrdered: store dL/dz_i of every pixel into dz [B,k,H,W] for bilinear_adjoint_kernel.
// Otherwise accumulate the adjoint of the upsample into grad_logits with float atomics, through
// a band of grid rows in shared memory when band_capacity > 0 (rows the host allocated).
template <typename scalar_t, typename acc_t, bool kOrdered>
__global__ void mix_backward_kernel(const scalar_t* __restrict__ grad_mixed, const acc_t* __restrict__ grad_sparsity,
                                    const scalar_t* __restrict__ images, const acc_t* __restrict__ logits,
                                    scalar_t* __restrict__ grad_images, acc_t* __restrict__ grad_logits,
                                    acc_t* __restrict__ dz_out, MixShape s, acc_t inv_count, int64_t band_capacity) {
  extern __shared__ unsigned char shared_raw[];
  const int64_t k = s.k, C = s.C, H = s.H, W = s.W, h = s.h, w = s.w;
  acc_t* sig = reinterpret_cast<acc_t*>(shared_raw);  // [k][blockDim.x]
  acc_t* G = sig + k * blockDim.x;                     // [k][blockDim.x]: dL/dm_i
  acc_t* band_grad = G + k * blockDim.x;               // [k][band_rows][w] when use_band
  const int64_t HW = H * W;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * blockDim.x;
  const int64_t p = p0 + threadIdx.x;
  const bool valid = p < HW;
  const int64_t y = valid ? p / W : 0, x = valid ? p % W : 0;
  const LinearTap<acc_t> ty = linear_tap<acc_t>(y, h, H);
  const LinearTap<acc_t> tx = linear_tap<acc_t>(x, w, W);
  int64_t band_first = 0, band_rows = h;
  bool use_band = !kOrdered && band_capacity > 0;
  if (use_band) {
    tile_band<acc_t>(p0, blockDim.x, H, W, h, &band_first, &band_rows);
    // The host sized band_capacity with the same tile_band; should the two ever disagree, this
    // block falls back to global atomics instead of writing past its shared memory.
    use_band = band_rows <= band_capacity;
  }
  const int64_t band_size = k * band_rows * w;
  const int64_t t = threadIdx.x, T = blockDim.x;

  for (int64_t b = blockIdx.y; b < s.B; b += gridDim.y) {
    acc_t* grid_b = grad_logits + b * k * h * w;
    if (use_band) {
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
        const acc_t dz = mask_logit_grad<acc_t>(sv / total, sv, G[i * T + t], g_bar);
        if constexpr (kOrdered) {
          dz_out[(b * k + i) * HW + p] = dz;
        } else {
          // Adjoint of the bilinear upsample: the 4 cells this pixel read (at the border y0 == y1
          // or x0 == x1, and both weights land in the same cell).
          acc_t* top = use_band ? band_grad + (i * band_rows + ty.i0 - band_first) * w : grid_b + (i * h + ty.i0) * w;
          acc_t* bottom = top + (ty.i1 - ty.i0) * w;
          atomicAdd(top + tx.i0, ty.w0 * tx.w0 * dz);
          atomicAdd(top + tx.i1, ty.w0 * tx.w1 * dz);
          atomicAdd(bottom + tx.i0, ty.w1 * tx.w0 * dz);
          atomicAdd(bottom + tx.i1, ty.w1 * tx.w1 * dz);
        }
      }
    }
    if (use_band) {
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

// grad_logits[plane][gy][gx] = adjoint of the bilinear upsample of dz[plane] at (gy, gx), one
// thread per cell summing in a fixed order: the deterministic second pass.
template <typename acc_t>
__global__ void bilinear_adjoint_kernel(const acc_t* __restrict__ dz, acc_t* __restrict__ grad_logits, int64_t cells,
                                        int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= cells) return;
  const int64_t plane = cell / (h * w), gy = (cell / w) % h, gx = cell % w;
  grad_logits[cell] = bilinear_adjoint_at<acc_t>(dz + plane * H * W, H, W, h, w, gy, gx);
}

}  // namespace

// `deterministic` is accepted for the schema's sake: the forward is always deterministic.
std::tuple<at::Tensor, at::Tensor> mix_cuda(const at::Tensor& images_in, const at::Tensor& logits_in,
                                            bool /*deterministic*/) {
  const MixShape s = check_mix_inputs("supermix::mix", images_in, logits_in);
  const c10::cuda::OptionalCUDAGuard device_guard(images_in.device());
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mixed = at::empty({s.B, s.C, s.H, s.W}, images.options());
  at::Tensor sparsity = at::empty({s.B}, logits.options());
  if (s.B == 0) {
    return {mixed, sparsity};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t threads = block_size_for(s.k * sizeof(acc_t), kMaxThreads / cuda::kWarpSize * sizeof(acc_t),
                                           "supermix::mix", s);
    const int64_t shared = (threads / cuda::kWarpSize + s.k * threads) * sizeof(acc_t);
    const int64_t tiles = cuda::ceil_div(s.H * s.W, threads);
    const dim3 grid(grid_x(tiles, "supermix::mix"), std::min(s.B, cuda::kMaxGridY));
    at::Tensor tile_sparsity = at::empty({s.B, tiles}, logits.options());
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.k * s.H * s.W);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_cuda", [&] {
      mix_forward_kernel<scalar_t, acc_t><<<grid, threads, shared, stream>>>(
          images.const_data_ptr<scalar_t>(), logits.const_data_ptr<acc_t>(), mixed.mutable_data_ptr<scalar_t>(),
          tile_sparsity.mutable_data_ptr<acc_t>(), s.B, s.k, s.C, s.H, s.W, s.h, s.w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    sum_tiles_kernel<acc_t><<<std::min(s.B, cuda::kMaxGridY), kMaxThreads, 0, stream>>>(
        tile_sparsity.const_data_ptr<acc_t>(), sparsity.mutable_data_ptr<acc_t>(), s.B, tiles, inv_count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mixed, sparsity};
}

std::tuple<at::Tensor, at::Tensor> mix_backward_cuda(const at::Tensor& grad_mixed_in,
                                                     const at::Tensor& grad_sparsity_in, const at::Tensor& images_in,
                                                     const at::Tensor& logits_in, bool need_images_grad,
                                                     bool deterministic) {
  const MixShape s =
      check_mix_backward_inputs("supermix::mix_backward", grad_mixed_in, grad_sparsity_in, images_in, logits_in);
  const c10::cuda::OptionalCUDAGuard device_guard(images_in.device());
  const bool ordered = deterministic || at::globalContext().deterministicAlgorithms();
  const at::Tensor images = images_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_mixed = grad_mixed_in.to(images.scalar_type()).contiguous();
  const at::Tensor grad_sparsity = grad_sparsity_in.to(logits.scalar_type()).contiguous();
  at::Tensor grad_images =
      need_images_grad ? at::empty(images.sizes(), images.options()) : at::empty({0}, images.options());
  // The ordered pass writes every cell; the atomic one adds into zeros.
  at::Tensor grad_logits = ordered ? at::empty(logits.sizes(), logits.options()) : at::zeros(logits.sizes(), logits.options());
  if (s.B == 0) {
    return {grad_images, grad_logits};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_backward_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t threads = block_size_for(2 * s.k * sizeof(acc_t), 0, "supermix::mix_backward", s);
    const int64_t per_pixel = 2 * s.k * threads * sizeof(acc_t);
    // The largest band of grid rows any tile reads decides whether the grid fits in shared memory.
    const int64_t band_rows = ordered ? 0 : max_tile_band_rows<acc_t>(threads, s.H, s.W, s.h);
    const int64_t band_bytes = s.k * band_rows * s.w * sizeof(acc_t);
    const bool shared_grid = !ordered && per_pixel + band_bytes <= cuda::kSharedMemoryBytes;
    const int64_t shared = per_pixel + (shared_grid ? band_bytes : 0);
    const dim3 grid(grid_x(cuda::ceil_div(s.H * s.W, threads), "supermix::mix_backward"),
                    std::min(s.B, cuda::kMaxGridY));
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.k * s.H * s.W);
    // dL/dz of every source and pixel: the ordered pass's only extra memory, k floats per pixel.
    at::Tensor dz = ordered ? at::empty({s.B, s.k, s.H, s.W}, logits.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_backward_cuda",
                                    [&] {
                                      const auto kernel = ordered ? mix_backward_kernel<scalar_t, acc_t, true>
                                                                  : mix_backward_kernel<scalar_t, acc_t, false>;
                                      kernel<<<grid, threads, shared, stream>>>(
                                          grad_mixed.const_data_ptr<scalar_t>(), grad_sparsity.const_data_ptr<acc_t>(),
                                          images.const_data_ptr<scalar_t>(), logits.const_data_ptr<acc_t>(),
                                          need_images_grad ? grad_images.mutable_data_ptr<scalar_t>() : nullptr,
                                          grad_logits.mutable_data_ptr<acc_t>(),
                                          ordered ? dz.mutable_data_ptr<acc_t>() : nullptr, s, inv_count,
                                          shared_grid ? band_rows : 0);
                                      C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    });
    if (ordered) {
      const int64_t cells = s.B * s.k * s.h * s.w;
      bilinear_adjoint_kernel<acc_t><<<grid_x(cuda::ceil_div(cells, kMaxThreads), "supermix::mix_backward"),
                                       kMaxThreads, 0, stream>>>(dz.const_data_ptr<acc_t>(),
                                                                 grad_logits.mutable_data_ptr<acc_t>(), cells, s.H,
                                                                 s.W, s.h, s.w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_images, grad_logits};
}

TORCH_LIBRARY_IMPL(supermix, CUDA, m) {
  m.impl("mix", &mix_cuda);
  m.impl("mix_backward", &mix_backward_cuda);
}

}  // namespace supermix
