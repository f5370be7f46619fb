// precondition_grads_: the whole per-step work of the eigen method on the
// parameters' own gradients, in one call (precondition_grads_inverse_: the same
// for the inverse method, P = G_inv Γ A_inv). It builds each layer's Γ = [W | b]
// from weight.grad (and bias.grad), runs eigen_precondition, scales every P
// by the KL-clip factor ν and writes ν·P back into the same gradients.
//
// Why one op: on small models this work is dominated by per-call cost, not
// arithmetic. Done from Python (one cat, two copies and a handful of views
// per layer, a separate KL reduction) it cost about 0.2 ms a step more than
// the GEMMs themselves on the 4-layer digits CNN (benchmarks/RESULTS.md).
//
// Device-agnostic (CompositeExplicitAutograd): it calls the device kernels
// of eigen_precondition and kl_clip_sum through the dispatcher. On a GPU ν
// stays on the device (a 0-d tensor that scales P there), so the call never
// waits for the GPU: the CPU can queue the next step's kernels meanwhile.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace kfac_ext {
namespace {

constexpr const char* kOp = "precondition_grads_";

std::vector<at::Tensor> call_eigen_precondition(const std::vector<at::Tensor>& grads,
                                                at::TensorList qa, at::TensorList da,
                                                at::TensorList qg, at::TensorList dg,
                                                double damping) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kfac_ext::eigen_precondition", "")
                             .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList,
                                                            at::TensorList, at::TensorList,
                                                            at::TensorList, double)>();
  return op.call(grads, qa, da, qg, dg, damping);
}

std::vector<at::Tensor> call_inverse_precondition(const std::vector<at::Tensor>& grads,
                                                  at::TensorList a_inv, at::TensorList g_inv) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kfac_ext::inverse_precondition", "")
                             .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList,
                                                            at::TensorList)>();
  return op.call(grads, a_inv, g_inv);
}

// inverse_precondition on any device without a kernel of its own: one layer after another.
std::vector<at::Tensor> inverse_precondition_loop(at::TensorList grads, at::TensorList a_inv,
                                                  at::TensorList g_inv) {
  check_inverse_precondition_args("inverse_precondition", grads, a_inv, g_inv);
  std::vector<at::Tensor> out;
  out.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) out.push_back(at::mm(at::mm(g_inv[i], grads[i]), a_inv[i]));
  return out;
}

at::Tensor call_kl_clip_sum(const std::vector<at::Tensor>& precond,
                            const std::vector<at::Tensor>& grads) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kfac_ext::kl_clip_sum", "")
                             .typed<at::Tensor(at::TensorList, at::TensorList)>();
  return op.call(precond, grads);
}

// Writes `value` into `grad` (any layout: a grouped conv passes a slice).
void write_back(at::Tensor& grad, const at::Tensor& value) {
  if (grad.is_contiguous()) {
    grad.view(value.sizes()).copy_(value);
  } else {
    grad.copy_(value.reshape(grad.sizes()));
  }
}

// Each layer's Γ = [W | b] (in the dtype of the right-hand matrix) and which
// bias_grads entry it took. `right[i]` is the matrix applied on Γ's right (qa or
// a_inv): (in, in), or (in + 1, in + 1) when layer i has a bias row; `left[i]`
// (qg or g_inv) has out rows. Checks everything; writes nothing.
struct LayerGammas {
  std::vector<at::Tensor> gammas;
  std::vector<int> bias_of;  // index into bias_grads, -1 without a bias
};

LayerGammas build_gammas(const char* op, at::TensorList weight_grads, at::TensorList bias_grads,
                         at::TensorList right, const char* right_name, at::TensorList left,
                         const char* left_name) {
  const size_t layers = weight_grads.size();
  LayerGammas out{{}, std::vector<int>(layers, -1)};
  out.gammas.reserve(layers);
  size_t next_bias = 0;
  for (size_t i = 0; i < layers; ++i) {
    const at::Tensor& w = weight_grads[i];
    const auto name = item("weight_grads", i);
    const auto rname = item(right_name, i), lname = item(left_name, i);
    // Any floating dtype (a bf16 model's gradients too): Γ is built in the right matrix's dtype.
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, ": ", name,
                " must be a floating-point tensor; got ", w.scalar_type());
    TORCH_CHECK(w.dim() >= 1 && left[i].dim() == 2 && w.size(0) == left[i].size(0), op, ": ",
                name, " must have ", lname, ".size(0) rows; got shape ", w.sizes(), " for ",
                left_name, " of shape ", left[i].sizes());
    const int64_t rows = w.size(0), in = rows == 0 ? 0 : w.numel() / rows;
    at::Tensor gamma = w.reshape({rows, in});
    TORCH_CHECK(right[i].dim() == 2 && (right[i].size(0) == in || right[i].size(0) == in + 1), op,
                ": ", rname, " must be (in, in) or (in + 1, in + 1) with a bias, in = ", in,
                " for ", name, " of shape ", w.sizes(), "; got ", right[i].sizes());
    if (right[i].size(0) == in + 1) {
      TORCH_CHECK(next_bias < bias_grads.size(), op, ": ", rname,
                  " has a bias row but bias_grads holds only ", bias_grads.size(),
                  " tensors (one per layer with a bias, in layer order)");
      const at::Tensor& b = bias_grads[next_bias];
      const auto bname = item("bias_grads", next_bias);
      TORCH_CHECK(b.numel() == rows, op, ": ", bname, " must have ", rows, " elements (the rows of ",
                  name, "); got shape ", b.sizes());
      check_same_dtype(b, w, op, bname.c_str(), name.c_str());
      check_same_device(b, w, op, bname.c_str(), name.c_str());
      out.bias_of[i] = static_cast<int>(next_bias++);
      gamma = at::cat({gamma, b.reshape({rows, 1})}, 1);
    }
    out.gammas.push_back(gamma.to(right[i].scalar_type()));
  }
  TORCH_CHECK(next_bias == bias_grads.size(), op, ": bias_grads holds ", bias_grads.size(),
              " tensors but only ", next_bias, " layers have a bias row in ", right_name);
  return out;
}

// ν = min(1, sqrt(kl_clip / |kl_factor Σ<P, Γ>|)) (1 when kl_clip <= 0, or the
// sum is 0 or not finite), then the gradients <- ν P. Returns ν.
at::Tensor scale_and_write_back(at::TensorList weight_grads, at::TensorList bias_grads,
                                const LayerGammas& built, std::vector<at::Tensor>& precond,
                                double kl_clip, double kl_factor) {
  const auto scalar_options = at::TensorOptions().dtype(at::kDouble);
  if (precond.empty()) return at::ones({}, scalar_options);
  at::Tensor nu = at::ones({}, scalar_options.device(precond[0].device()));
  bool scale = kl_clip > 0;
  if (scale) {
    const at::Tensor vg = call_kl_clip_sum(precond, built.gammas).mul(kl_factor).abs();
    if (vg.is_cpu()) {  // no device to wait for: decide on the host, skip a scale by 1
      const double v = vg.item<double>();
      scale = v != 0.0 && std::isfinite(v) && kl_clip < v;
      if (scale) nu.fill_(std::sqrt(kl_clip / v));
    } else {
      const at::Tensor clipped = vg.reciprocal().mul_(kl_clip).sqrt_().clamp_max_(1.0);
      nu = at::where(at::isfinite(vg).logical_and(vg.ne(0)), clipped, nu);
    }
  }
  for (size_t i = 0; i < precond.size(); ++i) {
    at::Tensor p = precond[i];
    if (scale) p.mul_(nu);  // a 0-d tensor: P keeps its dtype
    at::Tensor w = weight_grads[i];
    const int bias = built.bias_of[i];
    const int64_t in = p.size(1) - (bias >= 0 ? 1 : 0);
    write_back(w, p.narrow(1, 0, in));
    if (bias >= 0) {
      at::Tensor b = bias_grads[static_cast<size_t>(bias)];
      write_back(b, p.select(1, in));
    }
  }
  return nu;
}

void check_kl_factor(const char* op, double kl_factor) {
  TORCH_CHECK(std::isfinite(kl_factor) && kl_factor >= 0, op,
              ": kl_factor must be finite and >= 0; got ", kl_factor);
}

at::Tensor precondition_grads(at::TensorList weight_grads, at::TensorList bias_grads,
                              at::TensorList qa, at::TensorList da, at::TensorList qg,
                              at::TensorList dg, double damping, double kl_clip,
                              double kl_factor) {
  check_layer_lists(kOp, "weight_grads", weight_grads.size(), qa, da, qg, dg);
  check_damping(damping, kOp);
  check_kl_factor(kOp, kl_factor);
  const LayerGammas built = build_gammas(kOp, weight_grads, bias_grads, qa, "qa", qg, "qg");
  // Everything that can fail has run by now (eigen_precondition checks the
  // rest before it computes): nothing is written before it.
  std::vector<at::Tensor> precond = call_eigen_precondition(built.gammas, qa, da, qg, dg, damping);
  return scale_and_write_back(weight_grads, bias_grads, built, precond, kl_clip, kl_factor);
}

// The inverse method: P = G_inv Γ A_inv per layer (two GEMMs instead of four).
at::Tensor precondition_grads_inverse(at::TensorList weight_grads, at::TensorList bias_grads,
                                      at::TensorList a_inv, at::TensorList g_inv, double kl_clip,
                                      double kl_factor) {
  constexpr const char* op = "precondition_grads_inverse_";
  const size_t layers = weight_grads.size();
  TORCH_CHECK(a_inv.size() == layers && g_inv.size() == layers, op,
              ": weight_grads, a_inv, g_inv must be lists of equal length (one entry per layer); "
              "got ", layers, ", ", a_inv.size(), ", ", g_inv.size());
  check_kl_factor(op, kl_factor);
  for (size_t i = 0; i < layers; ++i) {
    const auto aname = item("a_inv", i), gname = item("g_inv", i);
    check_float(a_inv[i], op, aname.c_str());
    check_square(a_inv[i], op, aname);
    check_square(g_inv[i], op, gname);
    check_same_dtype(g_inv[i], a_inv[i], op, gname.c_str(), aname.c_str());
    const auto wname = item("weight_grads", i);
    check_same_device(a_inv[i], weight_grads[i], op, aname.c_str(), wname.c_str());
    check_same_device(g_inv[i], weight_grads[i], op, gname.c_str(), wname.c_str());
  }
  const LayerGammas built = build_gammas(op, weight_grads, bias_grads, a_inv, "a_inv", g_inv,
                                         "g_inv");
  std::vector<at::Tensor> precond = call_inverse_precondition(built.gammas, a_inv, g_inv);
  return scale_and_write_back(weight_grads, bias_grads, built, precond, kl_clip, kl_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CompositeExplicitAutograd, m) {
  m.impl("precondition_grads_", &precondition_grads);
  m.impl("precondition_grads_inverse_", &precondition_grads_inverse);
  m.impl("inverse_precondition", &inverse_precondition_loop);
}

}  // namespace kfac_ext
