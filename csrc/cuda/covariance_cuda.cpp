// CUDA kernels of cov_update_, channel_cov_update_ and conv2d_act_factor:
// argument checks (as on the CPU), then launches on the current stream.
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

// Upper-left (rows x cols) block of a row-major matrix, as a strided view
// that at::addmm_ writes in place (unit column stride: cuBLAS takes it as is).
at::Tensor block(at::Tensor& m, int64_t rows, int64_t cols) {
  return m.narrow(0, 0, rows).narrow(1, 0, cols);
}

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

// Which algorithm builds the Conv2d factor. The implicit-im2col kernel reads
// the input once and never materialises U; cuBLAS on an explicit im2col copy
// pays N*T*D values of copy but runs its GEMM near peak. Measured on an H200
// at float32 (docs/cuda.md, 2026-11-28), the kernel won at D <= 576
// on the CIFAR ResNet-20 shapes (2.3-3.2x over unfold + GEMM) and at D = 147
// (ResNet-50's first conv, 1.3x); the GEMM won at D = 576 with 1e5 rows
// (1.2x) and at every D >= 1152 (1.3-1.6x). Beyond 1 GiB of copy the kernel
// is kept, for memory.
bool use_im2col_gemm(int64_t dim, int64_t rows, int64_t element_size) {
  const bool gemm_wins = dim >= 1024 || (dim >= 512 && rows >= 32768);
  return gemm_wins && rows * dim * element_size <= (int64_t{1} << 30);
}

// A = U^T U * scale with U = [im2col patches | 1] (rows N*T): one copy of the
// patches into (D0, N*T) and one GEMM; the ones column is the row sums.
at::Tensor factor_im2col_gemm(const at::Tensor& x, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, bool has_bias, double scale) {
  const at::Tensor patches = at::im2col(x, kernel_size, dilation, padding, stride);  // (N, D0, T)
  const int64_t d0 = patches.size(1);
  const at::Tensor u = patches.transpose(0, 1).reshape({d0, -1});
  const int64_t dim = d0 + (has_bias ? 1 : 0);
  at::Tensor out = at::empty({dim, dim}, x.options());
  block(out, d0, d0).addmm_(u, u.t(), 0.0, scale);  // beta 0: the empty block is not read
  if (has_bias) {
    const at::Tensor sums = u.sum(1).mul_(scale);  // U^T 1
    out.narrow(0, 0, d0).select(1, d0).copy_(sums);
    out.select(0, d0).select(0, d0).fill_(scale * static_cast<double>(u.size(1)));
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "conv2d_act_factor", [&] {
    mirror_upper_to_lower<scalar_t>(ptr<scalar_t>(out), dim, dim, current_stream());
  });
  return out;
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
  const int64_t positions = g.out_h * g.out_w;
  if (use_im2col_gemm(dim, N * positions, x.element_size())) {
    const double scale = 1.0 / (static_cast<double>(N) * positions * positions * positions);
    return factor_im2col_gemm(x, kernel_size, stride, padding, dilation, has_bias, scale)
        .to(input.scalar_type());
  }
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
