// CUDA kernel of conv2d_act_factor: argument checks (as on the CPU), then
// either the implicit-im2col kernel (conv2d_act_factor.cu) or an explicit
// im2col copy and one cuBLAS GEMM, on the current stream; the upper triangle
// is mirrored into the lower (cov_update.cu's mirror), so A is exactly symmetric.
#include "glue.h"

namespace kfac_ext::cuda {
namespace {

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

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) { m.impl("conv2d_act_factor", &conv2d_act_factor_cuda); }

}  // namespace kfac_ext::cuda
