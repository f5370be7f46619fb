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

void check_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 2, "conv2d_act_factor: ", name, " must have 2 elements, got ", v.size());
}

at::Tensor conv2d_act_factor_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, bool has_bias) {
  check_cuda(input, "conv2d_act_factor", "input");
  TORCH_CHECK(input.dim() == 4, "conv2d_act_factor: input must be 4-D (N, C, H, W), got ",
              input.dim(), "-D of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "conv2d_act_factor: input must be a floating tensor, got ", input.scalar_type());
  check_pair(kernel_size, "kernel_size");
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK(kernel_size[a] > 0, "conv2d_act_factor: kernel_size must be > 0, got ", kernel_size);
    TORCH_CHECK(stride[a] > 0, "conv2d_act_factor: stride must be > 0, got ", stride);
    TORCH_CHECK(dilation[a] > 0, "conv2d_act_factor: dilation must be > 0, got ", dilation);
    TORCH_CHECK(padding[a] >= 0, "conv2d_act_factor: padding must be >= 0, got ", padding);
  }
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  TORCH_CHECK(N > 0 && C > 0, "conv2d_act_factor: input must have N > 0 and C > 0, got ",
              input.sizes());
  const int64_t span_h = H + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1;
  const int64_t span_w = W + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0,
              "conv2d_act_factor: output size must be > 0, but out = (in + 2*padding - "
              "dilation*(kernel-1) - 1) / stride + 1 is not, for input ",
              input.sizes(), ", kernel_size ", kernel_size, ", stride ", stride, ", padding ",
              padding, ", dilation ", dilation);

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
  g.out_h = span_h / stride[0] + 1;
  g.out_w = span_w / stride[1] + 1;
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
