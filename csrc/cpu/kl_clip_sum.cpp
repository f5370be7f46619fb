// The KL-clip reduction sum_layers <P, Γ>, accumulated in float64 in one pass
// over each pair (no product tensor), returned as a 0-d float64 tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace kfac_ext::cpu {
namespace {

constexpr const char* kOp = "kl_clip_sum";

template <typename scalar_t>
double dot_f64(const scalar_t* a, const scalar_t* b, int64_t n) {
  return at::parallel_reduce(
      int64_t{0}, n, int64_t{32768}, 0.0,
      [&](int64_t i0, int64_t i1, double acc) {
        // Four partial sums: independent chains the compiler can vectorise.
        double s[4] = {0, 0, 0, 0};
        int64_t i = i0;
        for (; i + 4 <= i1; i += 4) {
          for (int k = 0; k < 4; ++k) s[k] += static_cast<double>(a[i + k]) * b[i + k];
        }
        for (; i < i1; ++i) s[0] += static_cast<double>(a[i]) * b[i];
        return acc + ((s[0] + s[1]) + (s[2] + s[3]));
      },
      [](double x, double y) { return x + y; });
}

at::Tensor kl_clip_sum_cpu(at::TensorList precond, at::TensorList grads) {
  check_kl_clip_sum_args(precond, grads);
  double total = 0.0;
  for (size_t i = 0; i < precond.size(); ++i) {
    // Gradients and their preconditioned versions are contiguous in practice;
    // anything else is made so (a copy, only then).
    const auto p = precond[i].contiguous();
    const auto g = grads[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), kOp, [&] {
      total += dot_f64(p.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), p.numel());
    });
  }
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble));
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("kl_clip_sum", &kl_clip_sum_cpu); }

}  // namespace kfac_ext::cpu
