// newton_step on the CPU: one fused pass per sample (smooth the k gradient planes, dot product,
// clamped step, update) with a small per-thread scratch. Mirrors cuda/newton_step_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cpu_math.h"

namespace supermix {

at::Tensor newton_step_cpu(const at::Tensor& logits_in, const at::Tensor& grad_in, const at::Tensor& loss_in,
                           const at::Tensor& active_in, double sigma) {
  check_newton_inputs("supermix::newton_step", logits_in, grad_in, loss_in, active_in, sigma);
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
  const std::vector<double> taps64 = gaussian_taps(sigma, std::max<int64_t>(h, w) - 1);
  const int64_t radius = (static_cast<int64_t>(taps64.size()) - 1) / 2;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "supermix::newton_step_cpu", [&] {
    using acc_t = scalar_t;
    const std::vector<acc_t> taps(taps64.begin(), taps64.end());
    const acc_t* logits_p = logits.const_data_ptr<acc_t>();
    const acc_t* grad_p = grad.const_data_ptr<acc_t>();
    const acc_t* loss_p = loss.const_data_ptr<acc_t>();
    const bool* active_p = active.const_data_ptr<bool>();
    acc_t* out_p = out.mutable_data_ptr<acc_t>();
    const int64_t plane = h * w, sample = k * plane;
    at::parallel_for(0, B, std::max<int64_t>(1, 4096 / sample), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tmp(plane), padded(w + 2 * radius, acc_t(0));
      for (int64_t b = begin; b < end; ++b) {
        const acc_t* logits_b = logits_p + b * sample;
        acc_t* out_b = out_p + b * sample;
        if (!active_p[b]) {
          std::memcpy(out_b, logits_b, sample * sizeof(acc_t));
          continue;
        }
        // The smoothed gradient is written into the output, then turned into the update in place.
        const acc_t* grad_b = grad_p + b * sample;
        for (int64_t i = 0; i < k; ++i) {
          cpu::smooth_plane<acc_t>(grad_b + i * plane, tmp.data(), out_b + i * plane, h, w, taps.data(), radius, padded.data());
        }
        const acc_t step = newton_step_size<acc_t>(loss_p[b], cpu::dot_row<acc_t>(out_b, grad_b, sample));
        for (int64_t j = 0; j < sample; ++j) out_b[j] = logits_b[j] - step * out_b[j];
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(supermix, CPU, m) {
  m.impl("newton_step", &newton_step_cpu);
}

}  // namespace supermix
