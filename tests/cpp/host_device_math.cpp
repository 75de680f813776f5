// Driver for tests/test_host_device_math.py: prints what csrc/common.h computes, so that the
// test can compile it twice (mul-then-add as the CPU build rounds, and with FMA contraction as
// nvcc compiles device code) and require both builds to agree.
//
//   taps <h> <H> <float digest> <double digest> <naive digest> <band rows>
//        for every 1 <= h <= H <= max; band rows: the shared-memory rows the CUDA mix backward
//        allocates for W = 64 and 256 threads (max_tile_band_rows)
//   window_misses <n>     contributors of a grid cell outside adjoint_window (must be 0)
//   adjoint_error <e>     max |bilinear_adjoint_at - scatter| over small shapes (double)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "common.h"

namespace {

uint64_t mix_in(uint64_t digest, uint64_t value) {
  digest ^= value + 0x9e3779b97f4a7c15ull + (digest << 6) + (digest >> 2);
  return digest;
}

template <typename T>
uint64_t bits(T value) {
  uint64_t out = 0;
  std::memcpy(&out, &value, sizeof(T));
  return out;
}

template <typename acc_t>
uint64_t tap_digest(int64_t h, int64_t H) {
  uint64_t digest = 0;
  for (int64_t y = 0; y < H; ++y) {
    const supermix::LinearTap<acc_t> tap = supermix::linear_tap<acc_t>(y, h, H);
    digest = mix_in(digest, static_cast<uint64_t>(tap.i0) * 1000003u + static_cast<uint64_t>(tap.i1));
    digest = mix_in(digest, bits(tap.w0));
    digest = mix_in(digest, bits(tap.w1));
  }
  return digest;
}

// The source index as the CUDA kernels computed it before it became an explicit FMA: the
// compiler decides whether this is one rounding or two. Printed so the test can tell that the
// FMA build really contracts (otherwise it shows nothing).
uint64_t naive_digest(int64_t h, int64_t H) {
  uint64_t digest = 0;
  volatile float in = static_cast<float>(h), out = static_cast<float>(H);
  for (int64_t y = 0; y < H; ++y) {
    const float scale = in / out;
    const float src = scale * (static_cast<float>(y) + 0.5f) - 0.5f;
    digest = mix_in(digest, bits(src));
  }
  return digest;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t max_size = argc > 1 ? std::atoll(argv[1]) : 512;
  for (int64_t H = 1; H <= max_size; ++H) {
    for (int64_t h = 1; h <= H; ++h) {
      std::printf("taps %lld %lld %016llx %016llx %016llx %lld\n", static_cast<long long>(h),
                  static_cast<long long>(H), static_cast<unsigned long long>(tap_digest<float>(h, H)),
                  static_cast<unsigned long long>(tap_digest<double>(h, H)),
                  static_cast<unsigned long long>(naive_digest(h, H)),
                  static_cast<long long>(supermix::max_tile_band_rows<float>(256, H, 64, h)));
    }
  }

  // Every output coordinate that reads cell g lies in adjoint_window(g).
  int64_t window_misses = 0;
  for (int64_t out = 1; out <= max_size; ++out) {
    for (int64_t in = 1; in <= out; ++in) {
      for (int64_t x = 0; x < out; ++x) {
        const supermix::LinearTap<float> tap = supermix::linear_tap<float>(x, in, out);
        for (const int64_t g : {tap.i0, tap.i1}) {
          int64_t begin = 0, end = 0;
          supermix::adjoint_window(g, in, out, &begin, &end);
          if (x < begin || x >= end) ++window_misses;
        }
      }
    }
  }
  std::printf("window_misses %lld\n", static_cast<long long>(window_misses));

  // The ordered gather equals the scatter of the bilinear adjoint.
  std::mt19937_64 rng(0);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  double worst = 0.0;
  for (int64_t H = 1; H <= 24; ++H) {
    for (int64_t W = 1; W <= 24; W += 5) {
      for (int64_t h = 1; h <= H; ++h) {
        for (int64_t w = 1; w <= W; w += 3) {
          std::vector<double> fine(H * W), scattered(h * w, 0.0);
          for (double& v : fine) v = uniform(rng);
          for (int64_t y = 0; y < H; ++y) {
            const auto ty = supermix::linear_tap<double>(y, h, H);
            for (int64_t x = 0; x < W; ++x) {
              const auto tx = supermix::linear_tap<double>(x, w, W);
              const double v = fine[y * W + x];
              scattered[ty.i0 * w + tx.i0] += ty.w0 * tx.w0 * v;
              scattered[ty.i0 * w + tx.i1] += ty.w0 * tx.w1 * v;
              scattered[ty.i1 * w + tx.i0] += ty.w1 * tx.w0 * v;
              scattered[ty.i1 * w + tx.i1] += ty.w1 * tx.w1 * v;
            }
          }
          for (int64_t gy = 0; gy < h; ++gy) {
            for (int64_t gx = 0; gx < w; ++gx) {
              const double gathered = supermix::bilinear_adjoint_at<double>(fine.data(), H, W, h, w, gy, gx);
              const double error = std::abs(gathered - scattered[gy * w + gx]);
              worst = error > worst ? error : worst;
            }
          }
        }
      }
    }
  }
  std::printf("adjoint_error %.3e\n", worst);
  return 0;
}
