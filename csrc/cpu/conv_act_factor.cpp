// CPU kernel of kfac_ext::conv2d_act_factor: the Conv2d K-FAC activation
// factor A = ābar^T ābar / (N*T) of DESIGN.md section 2, where ā is the im2col
// patch matrix (rows N*T, columns C*kh*kw in F.unfold order, plus a ones
// column when has_bias) with every entry divided by T. Equivalently
// A = U^T U / (N * T^3) with U the raw patch matrix.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace kfac_ext {
namespace {

// Output length of one spatial dimension of a convolution.
int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

void check_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 2, "conv2d_act_factor: ", name, " must have 2 elements, got ", v.size());
}

at::Tensor conv2d_act_factor_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, bool has_bias) {
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
  const int64_t Ho = conv_out_size(H, kernel_size[0], stride[0], padding[0], dilation[0]);
  const int64_t Wo = conv_out_size(W, kernel_size[1], stride[1], padding[1], dilation[1]);
  TORCH_CHECK(H + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1 >= 0 &&
                  W + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1 >= 0 && Ho > 0 && Wo > 0,
              "conv2d_act_factor: output size must be > 0, but out = (in + 2*padding - dilation*(kernel-1) - 1)"
              " / stride + 1 is not, for input ", input.sizes(), ", kernel_size ", kernel_size,
              ", stride ", stride, ", padding ", padding, ", dilation ", dilation);
  TORCH_CHECK(N > 0 && C > 0, "conv2d_act_factor: input must have N > 0 and C > 0, got ", input.sizes());

  const int64_t T = Ho * Wo;
  const int64_t D = C * kernel_size[0] * kernel_size[1];
  // (N, D, T) -> (D, N*T): columns are patch rows of U.
  at::Tensor cols = at::im2col(input.contiguous(), kernel_size, dilation, padding, stride);
  at::Tensor ut = cols.transpose(0, 1).reshape({D, N * T});
  const int64_t Dout = D + (has_bias ? 1 : 0);
  at::Tensor out = at::empty({Dout, Dout}, input.options());
  const double scale = 1.0 / (static_cast<double>(N) * T * T * T);
  at::Tensor core = out.narrow(0, 0, D).narrow(1, 0, D);
  at::mm_out(core, ut, ut.t());
  if (has_bias) {
    at::Tensor colsum = ut.sum(1);
    out.narrow(0, D, 1).narrow(1, 0, D).copy_(colsum.unsqueeze(0));
    out.narrow(1, D, 1).narrow(0, 0, D).copy_(colsum.unsqueeze(1));
    out.index_put_({D, D}, static_cast<double>(N * T));
  }
  out.mul_(scale);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("conv2d_act_factor", &conv2d_act_factor_cpu); }

}  // namespace kfac_ext
