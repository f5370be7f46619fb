// CUDA kernels of cov_update_ and channel_cov_update_: argument checks (as
// on the CPU), then launches on the current stream.
// F is taken to be symmetric: the GEMM reads beta*F whole, and the lower
// triangle of the result is then overwritten with the mirror of the upper.
//
// The Gram products are cuBLAS GEMMs (through at::addmm_, on the current
// stream), not SYRK: on an H200 (docs/cuda.md, 2026-11-28) cuBLAS's
// SYRK ran 5x slower than the GEMM at X 6272x256 and 40x slower at
// 16 x 131072 (it does not split a long K over the chip), while computing
// only half the products. The mirror then makes the result exactly symmetric.
#include "glue.h"

#include <algorithm>

namespace kfac_ext::cuda {
namespace {

void cov_update_cuda(at::Tensor factor, const at::Tensor& x, double alpha, double beta,
                     bool append_ones) {
  constexpr const char* op = "cov_update_";
  check_cuda(factor, op, "factor");
  const int64_t d = check_cov_update_args(factor, x, append_ones);
  const int64_t n = factor.size(0);
  if (n == 0) return;

  const c10::cuda::CUDAGuard guard(factor.device());
  const auto stream = current_stream();
  const at::Tensor xc = x.contiguous();  // rows with unit column stride, row stride d
  const int64_t rows = xc.size(0);
  at::Tensor partial;
  if (append_ones) {
    partial = at::empty({column_sum_splits(rows) * std::max<int64_t>(d, 1)},
                        factor.options().dtype(at::kDouble));
  }
  // beta == 0 does not read F (NaN in it does not propagate), as in addmm.
  if (d > 0) block(factor, d, d).addmm_(xc.t(), xc, beta, alpha);
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), op, [&] {
    scalar_t* f = ptr<scalar_t>(factor);
    if (append_ones) {
      ones_column_update<scalar_t>(cptr<scalar_t>(xc), rows, d, std::max<int64_t>(d, 1), f, n,
                                   alpha, beta, ptr<double>(partial), stream);
    }
    mirror_upper_to_lower<scalar_t>(f, n, n, stream);
  });
}

void channel_cov_update_cuda(at::Tensor factor, const at::Tensor& x, double alpha, double beta) {
  constexpr const char* op = "channel_cov_update_";
  check_cuda(factor, op, "factor");
  check_channel_cov_update_args(factor, x);
  const int64_t samples = x.size(0), channels = x.size(1), length = x.size(2);
  if (channels == 0) return;
  const c10::cuda::CUDAGuard guard(factor.device());
  if (samples == 0 || length == 0) {
    // Nothing to add: F <- beta*F (beta == 0 clears, ignoring NaN in F, as addmm).
    beta == 0.0 ? factor.zero_() : factor.mul_(beta);
    return;
  }
  // sum_n X[n] X[n]^T == Y Y^T for Y = (C, N*L), the samples side by side.
  // Building Y copies N*C*L values, small next to the C^2*N*L multiply-adds,
  // and buys one GEMM with K = N*L instead of N of them with K = L (L is 49
  // on ResNet-50's last stage, where per-sample products run far below peak).
  const at::Tensor y = samples == 1 ? x.select(0, 0).contiguous()
                                    : x.transpose(0, 1).contiguous().view({channels, -1});
  factor.addmm_(y, y.t(), beta, alpha);
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), op, [&] {
    mirror_upper_to_lower<scalar_t>(ptr<scalar_t>(factor), channels, channels, current_stream());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) {
  m.impl("cov_update_", &cov_update_cuda);
  m.impl("channel_cov_update_", &channel_cov_update_cuda);
}

}  // namespace kfac_ext::cuda
