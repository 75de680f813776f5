// Device-agnostic math shared by the CPU (.cpp) and CUDA (.cu) kernels: the bilinear source
// index and weights of upsample_bilinear2d (align_corners=False) and their adjoint, the mask,
// sparsity and Newton-step formulas, the Gaussian taps and the tile bands of the CUDA mix
// backward. Everything here is inline and C10_HOST_DEVICE so the two backends compute the same
// function from the same lines, and the CPU tests (and tests/test_host_device_math.py, which
// compiles this header with and without FMA contraction) exercise the CUDA kernels' math too.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace supermix {

// Bounds on the Newton step size, from the authors' released code (see reference.py).
constexpr double kStepMin = 1e-4;
constexpr double kStepMax = 2000.0;
// Added to <g_sigma * grad, grad> so a zero gradient gives a finite (then clamped) step.
constexpr double kDenomEps = 1e-10;

// a * b + c rounded once. Written out because compilers contract a * b + c on their own where
// the target has FMA (nvcc always, GCC for -mfma code): an index computed as mul-then-add on one
// side and as an FMA on the other rounds differently at exact integers.
C10_HOST_DEVICE inline float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

C10_HOST_DEVICE inline double fused_multiply_add(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t absolute(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::fabs(x);
#else
  return std::abs(x);
#endif
}

// One output coordinate of a 1-D linear resize: value = w0 * in[i0] + w1 * in[i1].
template <typename acc_t>
struct LinearTap {
  int64_t i0;
  int64_t i1;
  acc_t w0;
  acc_t w1;
};

// Source index and weights of output coordinate `dst` when resizing `in_size` -> `out_size`
// with align_corners=False, as PyTorch's upsample_bilinear2d computes them
// (area_pixel_compute_source_index + guard_index_and_lambda), in the accumulation type.
// src = scale * (dst + 0.5) - 0.5 is one explicit FMA: the CUDA host sizes shared memory from
// the same taps the device computes, so both must round alike (nvcc would fuse it on the device
// only); the result differs from mul-then-sub by at most one ulp of src, well within the tests'
// tolerance against F.interpolate.
template <typename acc_t>
C10_HOST_DEVICE inline LinearTap<acc_t> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const acc_t scale = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t src = fused_multiply_add(scale, static_cast<acc_t>(dst) + static_cast<acc_t>(0.5), static_cast<acc_t>(-0.5));
  if (src < static_cast<acc_t>(0)) {
    src = static_cast<acc_t>(0);
  }
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) {
    i0 = in_size - 1;
  }
  acc_t lambda = src - static_cast<acc_t>(i0);
  if (lambda < static_cast<acc_t>(0)) {
    lambda = static_cast<acc_t>(0);
  } else if (lambda > static_cast<acc_t>(1)) {
    lambda = static_cast<acc_t>(1);
  }
  LinearTap<acc_t> tap;
  tap.i0 = i0;
  tap.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  tap.w0 = static_cast<acc_t>(1) - lambda;
  tap.w1 = lambda;
  return tap;
}

// w0 * v0 + w1 * v1: one axis of the bilinear blend. The kernels apply it along x, then along y
// with the y weights last, the grouping upsample_bilinear2d uses.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t blend(acc_t w0, acc_t v0, acc_t w1, acc_t v1) {
  return w0 * v0 + w1 * v1;
}

// The weight with which `tap` reads grid cell g (both weights at the border, where i0 == i1).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t tap_weight_at(const LinearTap<acc_t>& tap, int64_t g) {
  return (tap.i0 == g ? tap.w0 : static_cast<acc_t>(0)) + (tap.i1 == g ? tap.w1 : static_cast<acc_t>(0));
}

// Output coordinates [*begin, *end) that can read grid cell g of a resize in_size -> out_size:
// x reads floor(src) and floor(src) + 1, src = (x + 0.5) in/out - 0.5, so only where
// g - 1 <= src < g + 1, i.e. (2g - 1) out - in <= 2 in x < (2g + 3) out - in; and where src is
// clamped to 0, x reads cell 1 with weight 0 (kept, so that a NaN or inf there reaches the cell
// as it does in autograd's scatter). One coordinate of slack on each side absorbs the rounding
// of src; tap_weight_at decides membership exactly.
C10_HOST_DEVICE inline void adjoint_window(int64_t g, int64_t in_size, int64_t out_size, int64_t* begin,
                                           int64_t* end) {
  const int64_t low = (2 * g - 1) * out_size - in_size;
  const int64_t high = (2 * g + 3) * out_size - in_size;
  const int64_t first = (g <= 1 || low < 0) ? 0 : low / (2 * in_size) - 1;
  const int64_t last = high / (2 * in_size) + 2;
  *begin = first < 0 ? 0 : first;
  *end = last > out_size ? out_size : last;
}

// Adjoint of the bilinear upsample [h,w] -> [H,W] at grid cell (gy, gx): the sum over the output
// pixels that read the cell of their weight times `fine` [H,W], in a fixed order (rows, then
// columns within a row), so the result does not depend on scheduling.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bilinear_adjoint_at(const acc_t* fine, int64_t H, int64_t W, int64_t h, int64_t w,
                                                 int64_t gy, int64_t gx) {
  int64_t y_begin = 0, y_end = 0, x_begin = 0, x_end = 0;
  adjoint_window(gy, h, H, &y_begin, &y_end);
  adjoint_window(gx, w, W, &x_begin, &x_end);
  acc_t total = 0;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const acc_t wy = tap_weight_at(linear_tap<acc_t>(y, h, H), gy);
    if (wy == static_cast<acc_t>(0)) continue;
    acc_t row = 0;
    for (int64_t x = x_begin; x < x_end; ++x) {
      row += tap_weight_at(linear_tap<acc_t>(x, w, W), gx) * fine[y * W + x];
    }
    total += wy * row;
  }
  return total;
}

// Logistic sigmoid in the accumulation type.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid(acc_t z) {
  return static_cast<acc_t>(1) / (static_cast<acc_t>(1) + ::exp(-z));
}

// |m (m - 1)|, one term of the sparsity mean (paper eq. 5).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sparsity_term(acc_t m) {
  return absolute(m * (m - static_cast<acc_t>(1)));
}

// d|m (m - 1)|/dm in the form autograd gives it: sign(m (m - 1)) * (2m - 1). Written with the
// sign rather than as (1 - 2m) so that masks that round to exactly 0 or 1 get autograd's zero.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sparsity_term_grad(acc_t m) {
  const acc_t v = m * (m - static_cast<acc_t>(1));
  const acc_t sign = v > static_cast<acc_t>(0)   ? static_cast<acc_t>(1)
                     : v < static_cast<acc_t>(0) ? static_cast<acc_t>(-1)
                                                 : static_cast<acc_t>(0);
  return sign * (static_cast<acc_t>(2) * m - static_cast<acc_t>(1));
}

// dL/dz_i through m_i = s_i / sum_j s_j and s_i = sigmoid(z_i), given G_i = dL/dm_i and
// G_bar = sum_j m_j G_j: m_i (1 - s_i) (G_i - G_bar).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t mask_logit_grad(acc_t m, acc_t s, acc_t g, acc_t g_bar) {
  return m * (static_cast<acc_t>(1) - s) * (g - g_bar);
}

// Newton step size of paper eq. 7: clamp(loss / (<g_sigma * grad, grad> + 1e-10), 1e-4, 2000).
// Comparisons rather than fmin/fmax, so that a NaN ratio stays NaN as in torch.clamp.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t newton_step_size(acc_t loss, acc_t dot) {
  acc_t step = loss / (dot + static_cast<acc_t>(kDenomEps));
  if (step < static_cast<acc_t>(kStepMin)) step = static_cast<acc_t>(kStepMin);
  if (step > static_cast<acc_t>(kStepMax)) step = static_cast<acc_t>(kStepMax);
  return step;
}

// Offsets [begin, end] of the taps of a 1-D filter of the given radius at `position` that stay
// inside [0, length): zero padding drops the others.
struct TapRange {
  int64_t begin;
  int64_t end;
};

C10_HOST_DEVICE inline TapRange filter_tap_range(int64_t position, int64_t radius, int64_t length) {
  TapRange range;
  range.begin = position - radius < 0 ? -position : -radius;
  range.end = position + radius > length - 1 ? length - 1 - position : radius;
  return range;
}

// Radius of the Gaussian taps: floor(2.5 sigma).
inline int64_t gaussian_radius(double sigma) {
  return static_cast<int64_t>(std::floor(2.5 * sigma));
}

// The Gaussian taps at integer offsets -r..r (r = floor(2.5 sigma)), exp(-t^2 / (2 sigma^2))
// normalised to sum 1, as reference.gaussian_taps computes them in double. With zero padding,
// taps further than `max_offset` from the centre never touch the plane, so only the central
// 2 * kept + 1 (kept = min(r, max_offset)) are used; the normalisation still uses all 2r + 1.
// Passed to the CUDA kernels by value, which evaluate their taps themselves: no host-to-device
// copy per call, so the ops can be captured in a CUDA graph.
struct GaussianSpec {
  double sigma;
  double total;  // sum of exp(-t^2 / (2 sigma^2)) over t = -r..r
  int64_t radius;  // r
  int64_t kept;    // min(r, max_offset)
};

C10_HOST_DEVICE inline double gaussian_weight(int64_t t, double sigma) {
  return ::exp(-static_cast<double>(t * t) / (2.0 * sigma * sigma));
}

inline GaussianSpec gaussian_spec(double sigma, int64_t max_offset) {
  GaussianSpec spec{sigma, 1.0, gaussian_radius(sigma), 0};
  spec.kept = spec.radius < max_offset ? spec.radius : max_offset;
  if (spec.radius > 0) {
    spec.total = 0.0;
    for (int64_t t = -spec.radius; t <= spec.radius; ++t) spec.total += gaussian_weight(t, sigma);
  }
  return spec;
}

// Tap j (offset j - kept) of the 2 * kept + 1 central taps; sigma < 0.4 (r = 0) is the single tap 1.
C10_HOST_DEVICE inline double gaussian_tap(const GaussianSpec& spec, int64_t j) {
  return spec.radius == 0 ? 1.0 : gaussian_weight(j - spec.kept, spec.sigma) / spec.total;
}

inline std::vector<double> gaussian_taps(double sigma, int64_t max_offset) {
  const GaussianSpec spec = gaussian_spec(sigma, max_offset);
  std::vector<double> taps(2 * spec.kept + 1);
  for (int64_t j = 0; j < 2 * spec.kept + 1; ++j) taps[j] = gaussian_tap(spec, j);
  return taps;
}

// Grid rows [*first, *first + *rows) read by the output pixels [p0, p0 + threads) of a tile of
// the CUDA mix backward (row-major pixels of an H x W image, grid of h rows). The host sizes
// shared memory with it and the device places its band with it, from the same taps.
template <typename acc_t>
C10_HOST_DEVICE inline void tile_band(int64_t p0, int64_t threads, int64_t H, int64_t W, int64_t h,
                                      int64_t* first, int64_t* rows) {
  const int64_t p_end = p0 + threads < H * W ? p0 + threads : H * W;
  *first = linear_tap<acc_t>(p0 / W, h, H).i0;
  *rows = linear_tap<acc_t>((p_end - 1) / W, h, H).i1 - *first + 1;
}

// The largest band of any tile: the rows of shared memory the host allocates.
template <typename acc_t>
inline int64_t max_tile_band_rows(int64_t threads, int64_t H, int64_t W, int64_t h) {
  int64_t largest = 0;
  for (int64_t p0 = 0; p0 < H * W; p0 += threads) {
    int64_t first = 0, rows = 0;
    tile_band<acc_t>(p0, threads, H, W, h, &first, &rows);
    largest = rows > largest ? rows : largest;
  }
  return largest;
}

}  // namespace supermix
