// CUDA kernels of cov_update_, channel_cov_update_ and conv2d_act_factor:
// argument checks (as on the CPU), then launches on the current stream.
// F is taken to be symmetric: only its upper triangle is read, the lower one
// is overwritten with the mirror of the result.
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
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), op, [&] {
    scalar_t* f = ptr<scalar_t>(factor);
    if (d > 0) {
      syrk_xtx_upper<scalar_t>(blas_handle(), cptr<scalar_t>(xc), rows, d, d,
                               static_cast<scalar_t>(alpha), static_cast<scalar_t>(beta), f, n);
    }
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
  // and buys one SYRK with K = N*L instead of N of them with K = L (L is 49
  // on ResNet-50's last stage, where per-sample SYRKs run far below peak).
  const at::Tensor y = samples == 1 ? x.select(0, 0).contiguous()
                                    : x.transpose(0, 1).contiguous().view({channels, -1});
  const int64_t k = y.size(1);
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), op, [&] {
    scalar_t* f = ptr<scalar_t>(factor);
    syrk_xxt_upper<scalar_t>(blas_handle(), cptr<scalar_t>(y), channels, k, k,
                             static_cast<scalar_t>(alpha), static_cast<scalar_t>(beta), f,
                             channels);
    mirror_upper_to_lower<scalar_t>(f, channels, channels, current_stream());
  });
}

at::Tensor conv2d_act_factor_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, bool has_bias) {
  check_cuda(input, "conv2d_act_factor", "input");
  const auto out_size =
      check_conv2d_act_factor_args(input, kernel_size, stride, padding, dilation);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);

  ConvGeometry g{};
  g.batch = N;
  g.channels = C;
  g.height = H;
  g.width = W;
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  g.out_h = out_size.height;
  g.out_w = out_size.width;
  g.has_bias = has_bias;
  const int64_t dim = C * kernel_size[0] * kernel_size[1] + (has_bias ? 1 : 0);

  const c10::cuda::CUDAGuard guard(input.device());
  // Accumulate like a GEMM of the input dtype would: double for double,
  // float otherwise (half / bfloat16 inputs are widened), as on the CPU.
  const auto acc_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = input.to(acc_type).contiguous();
  at::Tensor out = at::zeros({dim, dim}, x.options());  // the kernel adds into it
  const int sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t splits = conv_act_factor_splits(g, sm_count);
  AT_DISPATCH_FLOATING_TYPES(acc_type, "conv2d_act_factor", [&] {
    conv_act_factor_upper<scalar_t>(cptr<scalar_t>(x), g, splits, ptr<scalar_t>(out),
                                    current_stream());
    mirror_upper_to_lower<scalar_t>(ptr<scalar_t>(out), dim, dim, current_stream());
  });
  return out.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) {
  m.impl("cov_update_", &cov_update_cuda);
  m.impl("channel_cov_update_", &channel_cov_update_cuda);
  m.impl("conv2d_act_factor", &conv2d_act_factor_cuda);
}

}  // namespace kfac_ext::cuda
