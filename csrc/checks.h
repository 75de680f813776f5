// Argument checks shared by the CPU and CUDA kernels. Every message names the op and the
// argument, says what was expected and what came.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>
#include <string>

namespace supermix {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    out << (d ? "," : "") << t.size(d);
  }
  out << "]";
  return out.str();
}

inline bool is_accumulation_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

inline bool is_image_dtype(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble;
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

inline void check_sigma(const char* op, double sigma) {
  TORCH_CHECK(std::isfinite(sigma) && sigma >= 0.0, op, ": sigma must be finite and >= 0, got ", sigma);
}

// Shapes of mix / mix_backward: images [B,k,C,H,W], logits [B,k,h,w].
struct MixShape {
  int64_t B, k, C, H, W, h, w;
};

inline MixShape check_mix_inputs(const char* op, const at::Tensor& images, const at::Tensor& logits) {
  TORCH_CHECK(images.dim() == 5, op, ": images must have shape [B,k,C,H,W] (5 dims), got ", shape_str(images));
  TORCH_CHECK(logits.dim() == 4, op, ": logits must have shape [B,k,h,w] (4 dims), got ", shape_str(logits));
  TORCH_CHECK(is_image_dtype(images), op, ": images must be float32, float16, bfloat16 or float64, got ",
              images.scalar_type());
  TORCH_CHECK(is_accumulation_dtype(logits), op, ": logits must be float32 or float64, got ", logits.scalar_type());
  check_same_device(op, "logits", logits, "images", images);
  MixShape s{images.size(0), images.size(1), images.size(2), images.size(3), images.size(4), logits.size(2),
             logits.size(3)};
  TORCH_CHECK(logits.size(0) == s.B, op, ": logits must have shape [B,k,h,w] with B = images.size(0) = ", s.B,
              ", got ", shape_str(logits));
  TORCH_CHECK(s.k >= 2, op, ": images must have shape [B,k,C,H,W] with k >= 2 sources, got ", shape_str(images));
  TORCH_CHECK(logits.size(1) == s.k, op, ": logits must have shape [B,k,h,w] with k = images.size(1) = ", s.k,
              ", got ", shape_str(logits));
  TORCH_CHECK(s.H >= 1 && s.W >= 1 && s.C >= 1, op, ": images must have shape [B,k,C,H,W] with C, H, W >= 1, got ",
              shape_str(images));
  TORCH_CHECK(s.h >= 1 && s.h <= s.H, op, ": logits must have shape [B,k,h,w] with 1 <= h <= H=", s.H, ", got ",
              shape_str(logits));
  TORCH_CHECK(s.w >= 1 && s.w <= s.W, op, ": logits must have shape [B,k,h,w] with 1 <= w <= W=", s.W, ", got ",
              shape_str(logits));
  return s;
}

inline MixShape check_mix_backward_inputs(const char* op, const at::Tensor& grad_mixed,
                                          const at::Tensor& grad_sparsity, const at::Tensor& images,
                                          const at::Tensor& logits) {
  const MixShape s = check_mix_inputs(op, images, logits);
  TORCH_CHECK(grad_mixed.dim() == 4 && grad_mixed.size(0) == s.B && grad_mixed.size(1) == s.C &&
                  grad_mixed.size(2) == s.H && grad_mixed.size(3) == s.W,
              op, ": grad_mixed must have shape [B,C,H,W] = [", s.B, ",", s.C, ",", s.H, ",", s.W, "], got ",
              shape_str(grad_mixed));
  TORCH_CHECK(grad_sparsity.dim() == 1 && grad_sparsity.size(0) == s.B, op,
              ": grad_sparsity must have shape [B] = [", s.B, "], got ", shape_str(grad_sparsity));
  TORCH_CHECK(at::isFloatingType(grad_mixed.scalar_type()), op, ": grad_mixed must be floating point, got ",
              grad_mixed.scalar_type());
  TORCH_CHECK(at::isFloatingType(grad_sparsity.scalar_type()), op, ": grad_sparsity must be floating point, got ",
              grad_sparsity.scalar_type());
  check_same_device(op, "grad_mixed", grad_mixed, "images", images);
  check_same_device(op, "grad_sparsity", grad_sparsity, "images", images);
  return s;
}

inline void check_smooth_inputs(const char* op, const at::Tensor& grad, double sigma) {
  TORCH_CHECK(grad.dim() == 3, op, ": grad must have shape [N,h,w] (3 dims), got ", shape_str(grad));
  TORCH_CHECK(is_accumulation_dtype(grad), op, ": grad must be float32 or float64, got ", grad.scalar_type());
  check_sigma(op, sigma);
}

inline void check_newton_inputs(const char* op, const at::Tensor& logits, const at::Tensor& grad,
                                const at::Tensor& loss, const at::Tensor& active, double sigma) {
  TORCH_CHECK(logits.dim() == 4, op, ": logits must have shape [B,k,h,w] (4 dims), got ", shape_str(logits));
  TORCH_CHECK(is_accumulation_dtype(logits), op, ": logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(grad.sizes() == logits.sizes(), op, ": grad must have the shape of logits ", shape_str(logits),
              ", got ", shape_str(grad));
  TORCH_CHECK(grad.scalar_type() == logits.scalar_type(), op, ": grad must have the dtype of logits (",
              logits.scalar_type(), "), got ", grad.scalar_type());
  const int64_t B = logits.size(0);
  TORCH_CHECK(loss.dim() == 1 && loss.size(0) == B, op, ": loss must have shape [B] = [", B, "], got ",
              shape_str(loss));
  TORCH_CHECK(is_accumulation_dtype(loss), op, ": loss must be float32 or float64, got ", loss.scalar_type());
  TORCH_CHECK(active.dim() == 1 && active.size(0) == B, op, ": active must have shape [B] = [", B, "], got ",
              shape_str(active));
  TORCH_CHECK(active.scalar_type() == at::kBool, op, ": active must be bool, got ", active.scalar_type());
  check_same_device(op, "grad", grad, "logits", logits);
  check_same_device(op, "loss", loss, "logits", logits);
  check_same_device(op, "active", active, "logits", logits);
  check_sigma(op, sigma);
}

}  // namespace supermix
