// Argument checks shared by the CPU kernels. Every message names the op and
// the argument, says what was expected and what was passed, so that a call
// through torch.ops.kfac_ext.* (bypassing kfac_ext/ops.py) fails just as
// clearly. Kernels run all checks before writing anything.
#pragma once

#include <ATen/ATen.h>

namespace kfac_ext::cpu {

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64; got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op,
                             const char* name, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "); got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "); got ", t.device());
}

inline void check_square(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == t.size(1), op, ": ", name,
              " must be a square 2-D matrix; got shape ", t.sizes());
}

// "factors[3]" for messages about list elements.
inline std::string item(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

}  // namespace kfac_ext::cpu
