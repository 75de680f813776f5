// Row-wise math for the CPU kernels, written as branch-free loops over contiguous arrays so that
// the compiler vectorises them at the baseline ISA (no -march flags, no -ffast-math): glibc's
// scalar exp would otherwise dominate the mask computation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common.h"

// x86-64 builds with GCC or Clang also compile the mix kernels for AVX2 + FMA (mix_cpu_avx2.cpp)
// and choose at run time.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SUPERMIX_CPU_AVX2 1
#define SUPERMIX_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define SUPERMIX_CPU_AVX2 0
#define SUPERMIX_ALWAYS_INLINE inline
#endif

namespace supermix {
namespace cpu {

template <typename To, typename From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  return __builtin_bit_cast(To, from);  // std::bit_cast without requiring C++20 headers
}

// Range of x where exp(x) is a normal number; exp_approx needs its argument clamped to it.
inline float exp_arg_min(float) { return -87.0f; }
inline float exp_arg_max(float) { return 88.0f; }
inline double exp_arg_min(double) { return -708.0; }
inline double exp_arg_max(double) { return 709.0; }

// exp(x) for x in [exp_arg_min, exp_arg_max]: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, a polynomial for exp(r), and 2^n built in the exponent bits.
// Rounding to n uses the 1.5 * 2^mantissa_bits trick, which also leaves n in the low mantissa
// bits. Accurate to about 1 ulp (float: Cephes expf polynomial; double: degree-13 Taylor).
SUPERMIX_ALWAYS_INLINE float exp_approx(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float kd = x * 1.44269504088896341f + shifter;
  const float n = kd - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t scale_bits = (bit_cast<uint32_t>(kd) << 23) + (127u << 23);
  return p * bit_cast<float>(scale_bits);
}

SUPERMIX_ALWAYS_INLINE double exp_approx(double x) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double kd = x * 1.4426950408889634074 + shifter;
  const double n = kd - shifter;
  double r = x - n * 6.93147180369123816490e-01;  // ln2 high part
  r = r - n * 1.90821492927058770002e-10;         // ln2 low part
  double p = 1.0 / 6227020800.0;                   // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const uint64_t scale_bits = (bit_cast<uint64_t>(kd) << 52) + (uint64_t(1023) << 52);
  return p * bit_cast<double>(scale_bits);
}

// out[x] = sigmoid(z[x]) = 1 / (1 + exp(-z[x])). The clamp has its own loop: inside the exp loop
// the compiler would thread the clamped (constant) branches and give up vectorising.
template <typename acc_t>
SUPERMIX_ALWAYS_INLINE void sigmoid_row(const acc_t* z, acc_t* out, int64_t n) {
  const acc_t lo = exp_arg_min(acc_t(0)), hi = exp_arg_max(acc_t(0));
  for (int64_t x = 0; x < n; ++x) out[x] = std::min(std::max(-z[x], lo), hi);
  for (int64_t x = 0; x < n; ++x) out[x] = acc_t(1) / (acc_t(1) + exp_approx(out[x]));
}

// sum_j a[j] * b[j] (b = nullptr: sum_j a[j]) with eight interleaved partial sums, so that the
// compiler can vectorise it without reassociating on its own (no -ffast-math); the order is
// fixed by n alone, so the result does not depend on threads.
template <typename acc_t>
SUPERMIX_ALWAYS_INLINE acc_t dot_row(const acc_t* a, const acc_t* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  if (b != nullptr) {
    for (; j + kLanes <= n; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[j + l] * b[j + l];
    }
  } else {
    for (; j + kLanes <= n; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[j + l];
    }
  }
  acc_t total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  for (; j < n; ++j) total += b != nullptr ? a[j] * b[j] : a[j];
  return total;
}

// dst[x] = sum_t taps[t] * src[t * stride + x] for x < n: a 1-D filter along rows (stride 1) or
// columns (stride = row length). Eight outputs at a time are accumulated in registers over all
// taps, so short rows do not wait on a store and reload per tap.
template <typename acc_t>
inline void filter_row(const acc_t* src, int64_t stride, const acc_t* taps, int64_t num_taps, acc_t* dst, int64_t n) {
  constexpr int64_t kLanes = 8;
  int64_t x = 0;
  for (; x + kLanes <= n; x += kLanes) {
    acc_t acc[kLanes] = {};
    for (int64_t t = 0; t < num_taps; ++t) {
      const acc_t tap = taps[t];
      const acc_t* s = src + t * stride + x;
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += tap * s[l];
    }
    for (int64_t l = 0; l < kLanes; ++l) dst[x + l] = acc[l];
  }
  for (; x < n; ++x) {
    acc_t acc = 0;
    for (int64_t t = 0; t < num_taps; ++t) acc += taps[t] * src[t * stride + x];
    dst[x] = acc;
  }
}

// Separable Gaussian smoothing of one h x w plane with zero padding: rows into `tmp`, then
// columns into `out`. `taps` has 2 * radius + 1 entries; `padded` is scratch of w + 2 * radius
// elements whose first and last `radius` entries are zero.
template <typename acc_t>
inline void smooth_plane(const acc_t* in, acc_t* tmp, acc_t* out, int64_t h, int64_t w, const acc_t* taps,
                         int64_t radius, acc_t* padded) {
  const int64_t width = 2 * radius + 1;
  for (int64_t y = 0; y < h; ++y) {
    std::memcpy(padded + radius, in + y * w, w * sizeof(acc_t));
    filter_row<acc_t>(padded, 1, taps, width, tmp + y * w, w);
  }
  for (int64_t y = 0; y < h; ++y) {
    // Rows outside the plane are zero: drop their taps instead of padding.
    const TapRange range = filter_tap_range(y, radius, h);
    filter_row<acc_t>(tmp + (y + range.begin) * w, w, taps + range.begin + radius, range.end - range.begin + 1,
                      out + y * w, w);
  }
}

}  // namespace cpu
}  // namespace supermix
