// Device-agnostic math shared by the CPU (.cpp) and CUDA (.cu) kernels: the bilinear source
// index and weights of upsample_bilinear2d (align_corners=False), the sign-correct derivative of
// the sparsity term, and the Gaussian taps. Everything here is inline and C10_HOST_DEVICE so the
// two backends compute the same function from the same lines.
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

// One output coordinate of a 1-D linear resize: value = w0 * in[i0] + w1 * in[i1].
template <typename acc_t>
struct LinearTap {
  int64_t i0;
  int64_t i1;
  acc_t w0;
  acc_t w1;
};

// Source index and weights of output coordinate `dst` when resizing `in_size` -> `out_size`
// with align_corners=False, written as PyTorch's upsample_bilinear2d computes them
// (area_pixel_compute_source_index + guard_index_and_lambda), in the accumulation type, so that
// the fused kernels reproduce F.interpolate(mode="bilinear") to rounding.
template <typename acc_t>
C10_HOST_DEVICE inline LinearTap<acc_t> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const acc_t scale = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t src = scale * (static_cast<acc_t>(dst) + static_cast<acc_t>(0.5)) - static_cast<acc_t>(0.5);
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

// Logistic sigmoid in the accumulation type.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid(acc_t z) {
  return static_cast<acc_t>(1) / (static_cast<acc_t>(1) + ::exp(-z));
}

// |m (m - 1)|, one term of the sparsity mean (paper eq. 5).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sparsity_term(acc_t m) {
  const acc_t v = m * (m - static_cast<acc_t>(1));
  return v < static_cast<acc_t>(0) ? -v : v;
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

// Radius of the Gaussian taps: floor(2.5 sigma).
inline int64_t gaussian_radius(double sigma) {
  return static_cast<int64_t>(std::floor(2.5 * sigma));
}

// Gaussian taps at integer offsets -r..r (r = floor(2.5 sigma)), exp(-t^2 / (2 sigma^2))
// normalised to sum 1, computed in double as reference.gaussian_taps does. With zero padding,
// taps further than `max_offset` from the centre never touch the plane, so only the central
// 2 * min(r, max_offset) + 1 are returned (the normalisation still uses all 2r + 1).
inline std::vector<double> gaussian_taps(double sigma, int64_t max_offset) {
  const int64_t radius = gaussian_radius(sigma);
  if (radius == 0) {
    return {1.0};
  }
  const int64_t kept = radius < max_offset ? radius : max_offset;
  std::vector<double> taps(2 * kept + 1);
  double total = 0.0;
  for (int64_t t = -radius; t <= radius; ++t) {
    const double value = std::exp(-static_cast<double>(t * t) / (2.0 * sigma * sigma));
    total += value;
    if (t >= -kept && t <= kept) {
      taps[t + kept] = value;
    }
  }
  for (double& tap : taps) {
    tap /= total;
  }
  return taps;
}

}  // namespace supermix
