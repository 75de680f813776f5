// The mix / mix_backward CPU kernels, compiled once per instruction set: mix_cpu.cpp includes
// this with SUPERMIX_CPU_ISA=base (the compiler's baseline), mix_cpu_avx2.cpp with
// SUPERMIX_CPU_ISA=avx2 under `#pragma GCC target("avx2,fma")`; mix_cpu.cpp picks one at run time.
// One fused pass over the output rows; the masks are computed row by row from precomputed
// bilinear indices and weights and never materialised at full resolution.
//
// Everything this file includes must already be included (it is, by both .cpp files) before
// the target pragma, so that shared inline functions are never compiled for AVX2 alone.
#ifndef SUPERMIX_CPU_ISA
#error "define SUPERMIX_CPU_ISA before including mix_cpu_kernels.h"
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cpu_math.h"

namespace supermix {
namespace SUPERMIX_CPU_ISA {

using cpu::sigmoid_row;

// Bilinear indices and weights of every output row and column, computed once per call.
// The transpose of the column resize is kept as one contiguous span of output columns per grid
// column (col_begin[gx], col_end[gx]) with the weight of each: the adjoint then gathers with
// dense dot products instead of scattering into w cells.
template <typename acc_t>
struct ResizeTaps {
  std::vector<LinearTap<acc_t>> rows;  // H entries, into the h grid rows
  std::vector<LinearTap<acc_t>> cols;  // W entries, into the w grid columns
  std::vector<int64_t> col_begin, col_end, col_offset;
  std::vector<acc_t> col_weights;

  explicit ResizeTaps(const MixShape& s) : rows(s.H), cols(s.W), col_begin(s.w, s.W), col_end(s.w, 0), col_offset(s.w) {
    for (int64_t y = 0; y < s.H; ++y) rows[y] = linear_tap<acc_t>(y, s.h, s.H);
    for (int64_t x = 0; x < s.W; ++x) {
      cols[x] = linear_tap<acc_t>(x, s.w, s.W);
      for (const int64_t gx : {cols[x].i0, cols[x].i1}) {
        col_begin[gx] = std::min(col_begin[gx], x);
        col_end[gx] = std::max(col_end[gx], x + 1);
      }
    }
    int64_t total = 0;
    for (int64_t gx = 0; gx < s.w; ++gx) {
      col_offset[gx] = total;
      total += std::max<int64_t>(0, col_end[gx] - col_begin[gx]);
    }
    col_weights.assign(total, acc_t(0));
    for (int64_t x = 0; x < s.W; ++x) {
      const LinearTap<acc_t>& tx = cols[x];
      col_weights[col_offset[tx.i0] + x - col_begin[tx.i0]] += tx.w0;
      col_weights[col_offset[tx.i1] + x - col_begin[tx.i1]] += tx.w1;
    }
  }

  // out[gx] = sum_x A[gx][x] fine[x], A the w x W column resize matrix transposed.
  void column_adjoint(const acc_t* fine, acc_t* out, int64_t w) const {
    for (int64_t gx = 0; gx < w; ++gx) {
      const int64_t begin = col_begin[gx];
      out[gx] = begin < col_end[gx]
                    ? cpu::dot_row<acc_t>(col_weights.data() + col_offset[gx], fine + begin, col_end[gx] - begin)
                    : acc_t(0);
    }
  }
};

// Per-task scratch, allocated once per task range (never per pixel). `columns` caches the
// logits of one sample upsampled along x: columns[(i*h + gy)*W + x], so that each output row is
// a contiguous blend of two of its rows (the y weight applied last, as upsample_bilinear2d does).
template <typename acc_t>
struct RowScratch {
  std::vector<acc_t> columns, sig, mask, row;
  int64_t sample = -1;

  explicit RowScratch(const MixShape& s)
      : columns(s.k * s.h * s.W), sig(s.k * s.W), mask(s.k * s.W), row(s.W) {}

  void load_sample(const acc_t* logits, const MixShape& s, const ResizeTaps<acc_t>& taps, int64_t b) {
    if (b == sample) return;
    sample = b;
    const acc_t* logits_b = logits + b * s.k * s.h * s.w;
    for (int64_t plane_row = 0; plane_row < s.k * s.h; ++plane_row) {
      const acc_t* src = logits_b + plane_row * s.w;
      acc_t* dst = columns.data() + plane_row * s.W;
      for (int64_t x = 0; x < s.W; ++x) {
        const LinearTap<acc_t> tx = taps.cols[x];
        dst[x] = blend(tx.w0, src[tx.i0], tx.w1, src[tx.i1]);
      }
    }
  }

  // Sigmoids sig[i*W + x] and normalised masks mask[i*W + x] of output row y of the loaded sample.
  void mask_row(const MixShape& s, const LinearTap<acc_t>& ty) {
    const int64_t W = s.W;
    acc_t* total = row.data();
    for (int64_t i = 0; i < s.k; ++i) {
      const acc_t* top = columns.data() + (i * s.h + ty.i0) * W;
      const acc_t* bottom = columns.data() + (i * s.h + ty.i1) * W;
      acc_t* z = mask.data() + i * W;  // the logits row is staged where its mask will go
      for (int64_t x = 0; x < W; ++x) z[x] = blend(ty.w0, top[x], ty.w1, bottom[x]);
      sigmoid_row<acc_t>(z, sig.data() + i * W, W);
    }
    std::copy(sig.begin(), sig.begin() + W, total);
    for (int64_t i = 1; i < s.k; ++i) {
      const acc_t* sig_i = sig.data() + i * W;
      for (int64_t x = 0; x < W; ++x) total[x] += sig_i[x];
    }
    for (int64_t x = 0; x < W; ++x) total[x] = acc_t(1) / total[x];
    for (int64_t i = 0; i < s.k; ++i) {
      const acc_t* sig_i = sig.data() + i * W;
      acc_t* mask_i = mask.data() + i * W;
      for (int64_t x = 0; x < W; ++x) mask_i[x] = sig_i[x] * total[x];
    }
  }
};

// Rows of work handed to one task at a time: enough pixels to amortise the per-task setup.
inline int64_t rows_per_task(const MixShape& s) {
  const int64_t work_per_row = std::max<int64_t>(1, s.W * s.C * s.k);
  return std::clamp<int64_t>(16384 / work_per_row, 1, s.H);
}

template <typename scalar_t, typename acc_t>
void mix_forward_kernel(const scalar_t* images, const acc_t* logits, scalar_t* mixed, acc_t* row_sparsity,
                        const MixShape& s) {
  const ResizeTaps<acc_t> taps(s);
  const int64_t k = s.k, C = s.C, H = s.H, W = s.W;
  at::parallel_for(0, s.B * H, rows_per_task(s), [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> scratch(s);
    std::vector<acc_t> out_row(W);
    acc_t* out = out_row.data();
    const acc_t* mask = scratch.mask.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      scratch.load_sample(logits, s, taps, b);
      scratch.mask_row(s, taps.rows[y]);
      for (int64_t x = 0; x < W; ++x) out[x] = sparsity_term<acc_t>(mask[x]);
      for (int64_t i = 1; i < k; ++i) {
        const acc_t* mask_i = mask + i * W;
        for (int64_t x = 0; x < W; ++x) out[x] += sparsity_term<acc_t>(mask_i[x]);
      }
      row_sparsity[row] = cpu::dot_row<acc_t>(out, nullptr, W);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* image = images + (((b * k) * C + c) * H + y) * W;
        for (int64_t x = 0; x < W; ++x) out[x] = mask[x] * static_cast<acc_t>(image[x]);
        for (int64_t i = 1; i < k; ++i) {
          const scalar_t* image_i = image + i * C * H * W;
          const acc_t* mask_i = mask + i * W;
          for (int64_t x = 0; x < W; ++x) out[x] += mask_i[x] * static_cast<acc_t>(image_i[x]);
        }
        scalar_t* mixed_row = mixed + ((b * C + c) * H + y) * W;
        for (int64_t x = 0; x < W; ++x) mixed_row[x] = static_cast<scalar_t>(out[x]);
      }
    }
  });
}

// Output rows [row_begin, row_end) read only grid rows [first, first + rows): a task accumulates
// its logits gradient into a private band of those rows, and the bands are summed afterwards in
// a fixed order, so the result does not depend on the thread count.
struct Band {
  int64_t row_begin, row_end, first, rows, offset;
};

template <typename scalar_t, typename acc_t>
void mix_backward_kernel(const scalar_t* grad_mixed, const acc_t* grad_sparsity, const scalar_t* images,
                         const acc_t* logits, scalar_t* grad_images, acc_t* grad_logits, const MixShape& s) {
  const ResizeTaps<acc_t> taps(s);
  const int64_t k = s.k, C = s.C, H = s.H, W = s.W, h = s.h, w = s.w;
  const int64_t chunk = rows_per_task(s);
  std::vector<Band> bands;
  int64_t band_elems = 0, max_band_rows = 0;
  for (int64_t r0 = 0; r0 < H; r0 += chunk) {
    const int64_t r1 = std::min(H, r0 + chunk);
    const int64_t first = taps.rows[r0].i0;
    const int64_t rows = taps.rows[r1 - 1].i1 - first + 1;
    bands.push_back({r0, r1, first, rows, band_elems});
    band_elems += k * rows * w;
    max_band_rows = std::max(max_band_rows, rows);
  }
  const int64_t num_bands = static_cast<int64_t>(bands.size());
  std::vector<acc_t> partial(s.B * band_elems);
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(k * H * W);

  at::parallel_for(0, s.B * num_bands, 1, [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> scratch(s);
    std::vector<acc_t> G_buf(k * W);       // dL/dm_i, then dL/dz_i
    std::vector<acc_t> fine(k * max_band_rows * W);  // dL/dz summed along y onto the band rows
    acc_t* G = G_buf.data();
    const acc_t* mask = scratch.mask.data();
    const acc_t* sig = scratch.sig.data();
    acc_t* g_bar = scratch.row.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_bands;
      const Band& band = bands[task % num_bands];
      scratch.load_sample(logits, s, taps, b);
      std::fill(fine.begin(), fine.begin() + k * band.rows * W, acc_t(0));
      const acc_t sparsity_coef = grad_sparsity[b] * inv_count;
      for (int64_t y = band.row_begin; y < band.row_end; ++y) {
        const LinearTap<acc_t> ty = taps.rows[y];
        scratch.mask_row(s, ty);
        const scalar_t* grad_row = grad_mixed + (b * C * H + y) * W;
        for (int64_t i = 0; i < k; ++i) {
          const acc_t* mask_i = mask + i * W;
          acc_t* G_i = G + i * W;
          for (int64_t x = 0; x < W; ++x) G_i[x] = sparsity_coef * sparsity_term_grad<acc_t>(mask_i[x]);
          const scalar_t* image_i = images + ((b * k + i) * C * H + y) * W;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* gm = grad_row + c * H * W;
            const scalar_t* image = image_i + c * H * W;
            for (int64_t x = 0; x < W; ++x) G_i[x] += static_cast<acc_t>(gm[x]) * static_cast<acc_t>(image[x]);
          }
          if (grad_images != nullptr) {
            scalar_t* gi = grad_images + ((b * k + i) * C * H + y) * W;
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t* gm = grad_row + c * H * W;
              scalar_t* gi_c = gi + c * H * W;
              for (int64_t x = 0; x < W; ++x) gi_c[x] = static_cast<scalar_t>(static_cast<acc_t>(gm[x]) * mask_i[x]);
            }
          }
        }
        // Through the normalisation m_i = s_i / sum_j s_j and the sigmoid:
        // dz_i = m_i (1 - s_i) (G_i - G_bar), G_bar = sum_i m_i G_i.
        for (int64_t x = 0; x < W; ++x) g_bar[x] = mask[x] * G[x];
        for (int64_t i = 1; i < k; ++i) {
          for (int64_t x = 0; x < W; ++x) g_bar[x] += mask[i * W + x] * G[i * W + x];
        }
        // Adjoint of the y blend: onto the two band rows this output row reads.
        for (int64_t i = 0; i < k; ++i) {
          const acc_t* mask_i = mask + i * W;
          const acc_t* sig_i = sig + i * W;
          acc_t* G_i = G + i * W;
          for (int64_t x = 0; x < W; ++x) G_i[x] = mask_logit_grad<acc_t>(mask_i[x], sig_i[x], G_i[x], g_bar[x]);
          acc_t* top = fine.data() + (i * band.rows + (ty.i0 - band.first)) * W;
          acc_t* bottom = fine.data() + (i * band.rows + (ty.i1 - band.first)) * W;
          for (int64_t x = 0; x < W; ++x) top[x] += ty.w0 * G_i[x];
          for (int64_t x = 0; x < W; ++x) bottom[x] += ty.w1 * G_i[x];
        }
      }
      // Adjoint of the x blend, once per band row rather than once per output row.
      acc_t* coarse = partial.data() + b * band_elems + band.offset;
      for (int64_t r = 0; r < k * band.rows; ++r) {
        taps.column_adjoint(fine.data() + r * W, coarse + r * w, w);
      }
    }
  });

  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* out = grad_logits + b * k * h * w;
      std::fill(out, out + k * h * w, acc_t(0));
      for (const Band& band : bands) {
        const acc_t* acc = partial.data() + b * band_elems + band.offset;
        for (int64_t i = 0; i < k; ++i) {
          for (int64_t r = 0; r < band.rows; ++r) {
            acc_t* dst = out + (i * h + band.first + r) * w;
            const acc_t* src = acc + (i * band.rows + r) * w;
            for (int64_t gx = 0; gx < w; ++gx) dst[gx] += src[gx];
          }
        }
      }
    }
  });
}

// Entry points of this instruction set: dtype dispatch around the kernels above (not inline:
// each is defined once, by the .cpp that includes this file).
// row_sparsity: [B*H] in the logits' dtype; grad_images undefined when not wanted.
void mix_forward(const at::Tensor& images, const at::Tensor& logits, const at::Tensor& mixed,
                        const at::Tensor& row_sparsity, const MixShape& s) {
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_cpu", [&] {
    using acc_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_cpu", [&] {
      mix_forward_kernel<scalar_t, acc_t>(images.const_data_ptr<scalar_t>(), logits.const_data_ptr<acc_t>(),
                                          mixed.mutable_data_ptr<scalar_t>(), row_sparsity.mutable_data_ptr<acc_t>(),
                                          s);
    });
  });
}

void mix_backward(const at::Tensor& grad_mixed, const at::Tensor& grad_sparsity, const at::Tensor& images,
                         const at::Tensor& logits, const at::Tensor& grad_images, const at::Tensor& grad_logits,
                         const MixShape& s) {
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::mix_backward_cpu", [&] {
    using acc_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "supermix::mix_backward_cpu", [&] {
      mix_backward_kernel<scalar_t, acc_t>(grad_mixed.const_data_ptr<scalar_t>(),
                                           grad_sparsity.const_data_ptr<acc_t>(), images.const_data_ptr<scalar_t>(),
                                           logits.const_data_ptr<acc_t>(),
                                           grad_images.defined() ? grad_images.mutable_data_ptr<scalar_t>() : nullptr,
                                           grad_logits.mutable_data_ptr<acc_t>(), s);
    });
  });
}

}  // namespace SUPERMIX_CPU_ISA
}  // namespace supermix
