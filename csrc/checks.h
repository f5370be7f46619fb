// Argument checks shared by the CPU and CUDA kernels, so both devices reject
// bad input with the same message. Every message names the op and the
// argument, says what was expected and what was passed, so that a call through
// torch.ops.kfac_ext.* (bypassing kfac_ext/ops.py) fails just as clearly.
// Kernels run all checks before writing anything.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <c10/util/safe_numerics.h>

#include <cmath>
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

// An in-place output must not share memory with an input it reads: the
// kernels read the input while they write the output, so the result would be
// garbage. Overlap the ATen check cannot decide (non-dense views) counts as
// sharing when the two live in one storage.
inline void check_no_alias(const at::Tensor& out, const at::Tensor& in, const char* op,
                           const std::string& out_name, const std::string& in_name) {
  const auto status = at::get_overlap_status(out, in);
  const bool shares = status == at::MemOverlapStatus::Full ||
                      status == at::MemOverlapStatus::Partial ||
                      (status == at::MemOverlapStatus::TooHard && out.has_storage() &&
                       in.has_storage() && out.storage().is_alias_of(in.storage()));
  TORCH_CHECK(!shares, op, ": ", out_name, " must not share memory with ", in_name, " (",
              out_name, " is written in place while ", in_name,
              " is read); pass a copy, e.g. ", in_name, ".clone()");
}

// Damping λ of the eigen method's (d_G d_A^T + λ): with λ <= 0 a zero
// eigenvalue (a singular factor) divides by zero and every gradient turns NaN.
inline void check_damping(double damping, const char* op) {
  TORCH_CHECK(damping > 0 && std::isfinite(damping), op,
              ": damping must be a finite number > 0 (it keeps d_G d_A^T + damping away from 0 "
              "for singular factors); got ", damping);
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
  check_no_alias(factor, x, op, "factor", "x");
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
  check_no_alias(factor, x, op, "factor", "x");
}

// kl_clip_sum(precond, grads): equal-length lists of equal-shape pairs, one
// floating dtype per pair, all on precond[0]'s device.
inline void check_kl_clip_sum_args(at::TensorList precond, at::TensorList grads) {
  constexpr const char* op = "kl_clip_sum";
  TORCH_CHECK(precond.size() == grads.size(), op,
              ": precond and grads must be lists of equal length; got ", precond.size(), " and ",
              grads.size());
  for (size_t i = 0; i < precond.size(); ++i) {
    const auto pn = item("precond", i), gn = item("grads", i);
    check_float(precond[i], op, pn.c_str());
    check_same_dtype(grads[i], precond[i], op, gn.c_str(), pn.c_str());
    check_same_device(grads[i], precond[i], op, gn.c_str(), pn.c_str());
    check_same_device(precond[i], precond[0], op, pn.c_str(), "precond[0]");
    TORCH_CHECK(grads[i].sizes() == precond[i].sizes(), op, ": ", gn, " must have the shape of ",
                pn, " ", precond[i].sizes(), "; got ", grads[i].sizes());
  }
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

// inverse_precondition: per layer grad (out, in), a_inv (in, in), g_inv (out, out),
// all floating, of grads[0]'s device and of one dtype per layer.
inline void check_inverse_precondition_args(const char* op, at::TensorList grads,
                                            at::TensorList a_inv, at::TensorList g_inv) {
  const size_t layers = grads.size();
  TORCH_CHECK(a_inv.size() == layers && g_inv.size() == layers, op,
              ": grads, a_inv, g_inv must be lists of equal length (one entry per layer); got ",
              layers, ", ", a_inv.size(), ", ", g_inv.size());
  for (size_t i = 0; i < layers; ++i) {
    const auto gn = item("grads", i), an = item("a_inv", i), qn = item("g_inv", i);
    const at::Tensor& g = grads[i];
    check_float(g, op, gn.c_str());
    TORCH_CHECK(g.dim() == 2, op, ": ", gn, " must be 2-D (out, in); got shape ", g.sizes());
    check_same_device(g, grads[0], op, gn.c_str(), "grads[0]");
    check_same_dtype(a_inv[i], g, op, an.c_str(), gn.c_str());
    check_same_dtype(g_inv[i], g, op, qn.c_str(), gn.c_str());
    check_same_device(a_inv[i], g, op, an.c_str(), gn.c_str());
    check_same_device(g_inv[i], g, op, qn.c_str(), gn.c_str());
    TORCH_CHECK(a_inv[i].dim() == 2 && a_inv[i].size(0) == g.size(1) && a_inv[i].size(1) == g.size(1),
                op, ": ", an, " must be (in, in) == (", g.size(1), ", ", g.size(1), ") to match ", gn,
                " of shape ", g.sizes(), "; got shape ", a_inv[i].sizes());
    TORCH_CHECK(g_inv[i].dim() == 2 && g_inv[i].size(0) == g.size(0) && g_inv[i].size(1) == g.size(0),
                op, ": ", qn, " must be (out, out) == (", g.size(0), ", ", g.size(0), ") to match ", gn,
                " of shape ", g.sizes(), "; got shape ", g_inv[i].sizes());
  }
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
    check_no_alias(mats[i], packed, op, item("mats", i), "packed");
  }
  if (!mats.empty()) {
    check_same_dtype(packed, mats[0], op, "packed", "mats[0]");
    check_same_device(packed, mats[0], op, "packed", "mats[0]");
  }
}

// conv2d_act_factor(input, kernel_size, stride, padding, dilation): checks the
// arguments and returns the number of output rows and columns.
// Largest activation factor conv2d_act_factor attempts (1 TiB: a 524288^2
// float32 matrix); beyond it a size is a mistake, not a model.
constexpr int64_t kMaxFactorBytes = int64_t{1} << 40;

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
  // The factor is (C*kh*kw + 1)^2 entries: absurd kernel sizes must fail here,
  // at once, not after planning O(kernel^2) tap pairs or overflowing a size.
  int64_t taps = 0, factor_dim = 0, factor_entries = 0, factor_bytes = 0;
  const bool overflow = c10::mul_overflows(kernel_size[0], kernel_size[1], &taps) ||
                        c10::mul_overflows(input.size(1), taps, &factor_dim) ||
                        c10::add_overflows(factor_dim, int64_t{1}, &factor_dim) ||
                        c10::mul_overflows(factor_dim, factor_dim, &factor_entries) ||
                        c10::mul_overflows(factor_entries, int64_t{input.element_size()},
                                           &factor_bytes);
  TORCH_CHECK(!overflow && factor_bytes <= kMaxFactorBytes, op,
              ": the factor would be (C*kh*kw [+1])^2 = (", input.size(1), "*", kernel_size[0],
              "*", kernel_size[1], " [+1])^2 entries, more than the ", kMaxFactorBytes >> 40,
              " TiB allowed; check kernel_size ", kernel_size, " and the input's channels ",
              input.sizes());
  // The kernels copy the zero-padded input (or its patches): same bound.
  int64_t padded_h = 0, padded_w = 0, padded_bytes = 0;
  const bool padded_overflow =
      c10::mul_overflows(padding[0], int64_t{2}, &padded_h) ||
      c10::add_overflows(padded_h, input.size(2), &padded_h) ||
      c10::mul_overflows(padding[1], int64_t{2}, &padded_w) ||
      c10::add_overflows(padded_w, input.size(3), &padded_w) ||
      c10::mul_overflows(padded_h, padded_w, &padded_bytes) ||
      c10::mul_overflows(padded_bytes, input.size(0) * input.size(1) * input.element_size(),
                         &padded_bytes);
  TORCH_CHECK(!padded_overflow && padded_bytes <= kMaxFactorBytes, op,
              ": the zero-padded input would be N*C*(H+2*padding)*(W+2*padding) elements, more "
              "than the ", kMaxFactorBytes >> 40, " TiB allowed; check padding ", padding,
              " for input ", input.sizes());
  int64_t reach_h = 0, reach_w = 0;  // dilation*(kernel-1): how far one window reaches
  TORCH_CHECK(!c10::mul_overflows(dilation[0], kernel_size[0] - 1, &reach_h) &&
                  !c10::mul_overflows(dilation[1], kernel_size[1] - 1, &reach_w),
              op, ": dilation*(kernel_size-1) overflows for dilation ", dilation,
              ", kernel_size ", kernel_size);
  const int64_t span_h = padded_h - reach_h - 1;
  const int64_t span_w = padded_w - reach_w - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, op,
              ": output size must be > 0, but out = (in + 2*padding - dilation*(kernel-1) - 1)"
              " / stride + 1 is not, for input ", input.sizes(), ", kernel_size ", kernel_size,
              ", stride ", stride, ", padding ", padding, ", dilation ", dilation);
  return {span_h / stride[0] + 1, span_w / stride[1] + 1};
}

}  // namespace kfac_ext
