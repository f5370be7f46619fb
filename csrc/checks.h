// Argument checks shared by the CPU and CUDA kernels, so both devices reject
// bad input with the same message. Every message names the op and the
// argument, says what was expected and what was passed, so that a call through
// torch.ops.kfac_ext.* (bypassing kfac_ext/ops.py) fails just as clearly.
// Kernels run all checks before writing anything.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>
#include <utility>

namespace kfac_ext {

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

// ---- per-op argument checks (device-independent) ----

// A factor updated in place.
inline void check_factor(const at::Tensor& factor, const char* op) {
  check_float(factor, op, "factor");
  check_square(factor, op, "factor");
  TORCH_CHECK(factor.is_contiguous(), op, ": factor must be contiguous (it is updated in place)");
}

// cov_update_(factor, x, ..., append_ones); returns d, the width of x.
inline int64_t check_cov_update_args(const at::Tensor& factor, const at::Tensor& x,
                                     bool append_ones) {
  constexpr const char* op = "cov_update_";
  check_factor(factor, op);
  check_float(x, op, "x");
  check_same_dtype(x, factor, op, "x", "factor");
  check_same_device(x, factor, op, "x", "factor");
  const int64_t n = factor.size(0);
  TORCH_CHECK(!append_ones || n >= 1, op, ": factor must be at least 1x1 with append_ones=True");
  const int64_t d = append_ones ? n - 1 : n;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d, op, ": x must be 2-D (rows, d) with d == ",
              append_ones ? "factor.size(0) - 1 (append_ones=True)" : "factor.size(0)", " == ", d,
              "; got shape ", x.sizes(), " for factor of shape ", factor.sizes());
  return d;
}

inline void check_channel_cov_update_args(const at::Tensor& factor, const at::Tensor& x) {
  constexpr const char* op = "channel_cov_update_";
  check_factor(factor, op);
  check_float(x, op, "x");
  check_same_dtype(x, factor, op, "x", "factor");
  check_same_device(x, factor, op, "x", "factor");
  TORCH_CHECK(x.dim() == 3 && x.size(1) == factor.size(0), op,
              ": x must be 3-D (N, C, L) with C == factor.size(0) == ", factor.size(0),
              "; got shape ", x.sizes());
}

// The per-layer lists of eigen_precondition / precondition_grads_: one entry
// per layer in each (`first` names the gradient list).
inline void check_layer_lists(const char* op, const char* first, size_t layers,
                              at::TensorList qa, at::TensorList da, at::TensorList qg,
                              at::TensorList dg) {
  TORCH_CHECK(qa.size() == layers && da.size() == layers && qg.size() == layers &&
                  dg.size() == layers,
              op, ": ", first, ", qa, da, qg, dg must be lists of equal length (one entry per "
              "layer); got ", layers, ", ", qa.size(), ", ", da.size(), ", ", qg.size(), ", ",
              dg.size());
}

// Layer i of eigen_precondition: grad (out, in), qa (in, in), da (in,),
// qg (out, out), dg (out,), all of grads[0]'s dtype and device.
inline void check_precondition_layer(size_t i, const at::Tensor& g, const at::Tensor& qa,
                                     const at::Tensor& da, const at::Tensor& qg,
                                     const at::Tensor& dg, const at::Tensor& g0) {
  constexpr const char* op = "eigen_precondition";
  const auto gn = item("grads", i);
  check_float(g, op, gn.c_str());
  TORCH_CHECK(g.dim() == 2, op, ": ", gn, " must be 2-D (out, in); got shape ", g.sizes());
  check_same_device(g, g0, op, gn.c_str(), "grads[0]");
  const int64_t out = g.size(0), in = g.size(1);
  const std::pair<const at::Tensor*, std::string> named[] = {
      {&qa, item("qa", i)}, {&da, item("da", i)}, {&qg, item("qg", i)}, {&dg, item("dg", i)}};
  for (const auto& [t, name] : named) {
    check_same_dtype(*t, g, op, name.c_str(), gn.c_str());
    check_same_device(*t, g, op, name.c_str(), gn.c_str());
  }
  TORCH_CHECK(qa.dim() == 2 && qa.size(0) == in && qa.size(1) == in, op, ": ", named[0].second,
              " must be (in, in) == (", in, ", ", in, ") to match ", gn, " of shape ", g.sizes(),
              "; got shape ", qa.sizes());
  TORCH_CHECK(da.dim() == 1 && da.size(0) == in, op, ": ", named[1].second, " must be (in,) == (",
              in, ",) to match ", gn, " of shape ", g.sizes(), "; got shape ", da.sizes());
  TORCH_CHECK(qg.dim() == 2 && qg.size(0) == out && qg.size(1) == out, op, ": ",
              named[2].second, " must be (out, out) == (", out, ", ", out, ") to match ", gn,
              " of shape ", g.sizes(), "; got shape ", qg.sizes());
  TORCH_CHECK(dg.dim() == 1 && dg.size(0) == out, op, ": ", named[3].second,
              " must be (out,) == (", out, ",) to match ", gn, " of shape ", g.sizes(),
              "; got shape ", dg.sizes());
}

// The square matrices of pack_triu / unpack_triu_, all of mats[0]'s dtype and device.
inline void check_triu_mats(at::TensorList mats, const char* op) {
  for (size_t i = 0; i < mats.size(); ++i) {
    const auto name = item("mats", i);
    check_float(mats[i], op, name.c_str());
    check_square(mats[i], op, name);
    check_same_dtype(mats[i], mats[0], op, name.c_str(), "mats[0]");
    check_same_device(mats[i], mats[0], op, name.c_str(), "mats[0]");
  }
}

// The sum of n(n+1)/2 over square matrices.
inline int64_t packed_triu_size(at::TensorList mats) {
  int64_t total = 0;
  for (const auto& m : mats) total += m.size(0) * (m.size(0) + 1) / 2;
  return total;
}

// unpack_triu_(packed, mats): packed holds every upper triangle; mats are written in place.
inline void check_unpack_triu_args(const at::Tensor& packed, at::TensorList mats) {
  constexpr const char* op = "unpack_triu_";
  check_triu_mats(mats, op);
  check_float(packed, op, "packed");
  const int64_t total = packed_triu_size(mats);
  TORCH_CHECK(packed.dim() == 1 && packed.size(0) == total, op,
              ": packed must be 1-D with sum n(n+1)/2 over mats == ", total,
              " entries; got shape ", packed.sizes());
  for (size_t i = 0; i < mats.size(); ++i) {
    TORCH_CHECK(at::has_internal_overlap(mats[i]) != at::MemOverlap::Yes, op, ": ",
                item("mats", i), " must not have overlapping memory (e.g. an expanded tensor): "
                "it is written in place");
  }
  if (!mats.empty()) {
    check_same_dtype(packed, mats[0], op, "packed", "mats[0]");
    check_same_device(packed, mats[0], op, "packed", "mats[0]");
  }
}

// conv2d_act_factor(input, kernel_size, stride, padding, dilation): checks the
// arguments and returns the number of output rows and columns.
struct ConvOutputSize {
  int64_t height;
  int64_t width;
};

inline ConvOutputSize check_conv2d_act_factor_args(const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation) {
  constexpr const char* op = "conv2d_act_factor";
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": input must be a floating tensor, got ", input.scalar_type());
  const std::pair<at::IntArrayRef, const char*> pairs[] = {
      {kernel_size, "kernel_size"}, {stride, "stride"}, {padding, "padding"}, {dilation, "dilation"}};
  for (const auto& [v, name] : pairs) {
    TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  }
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK(kernel_size[a] > 0, op, ": kernel_size must be > 0, got ", kernel_size);
    TORCH_CHECK(stride[a] > 0, op, ": stride must be > 0, got ", stride);
    TORCH_CHECK(dilation[a] > 0, op, ": dilation must be > 0, got ", dilation);
    TORCH_CHECK(padding[a] >= 0, op, ": padding must be >= 0, got ", padding);
  }
  TORCH_CHECK(input.size(0) > 0 && input.size(1) > 0, op,
              ": input must have N > 0 and C > 0, got ", input.sizes());
  const int64_t span_h = input.size(2) + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1;
  const int64_t span_w = input.size(3) + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, op,
              ": output size must be > 0, but out = (in + 2*padding - dilation*(kernel-1) - 1)"
              " / stride + 1 is not, for input ", input.sizes(), ", kernel_size ", kernel_size,
              ", stride ", stride, ", padding ", padding, ", dilation ", dilation);
  return {span_h / stride[0] + 1, span_w / stride[1] + 1};
}

}  // namespace kfac_ext
