// precondition_grads_: the whole per-step work of the eigen method on the
// parameters' own gradients, in one call. It builds each layer's Γ = [W | b]
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

at::Tensor precondition_grads(at::TensorList weight_grads, at::TensorList bias_grads,
                              at::TensorList qa, at::TensorList da, at::TensorList qg,
                              at::TensorList dg, double damping, double kl_clip,
                              double kl_factor) {
  const size_t layers = weight_grads.size();
  check_layer_lists(kOp, "weight_grads", layers, qa, da, qg, dg);
  TORCH_CHECK(std::isfinite(kl_factor) && kl_factor >= 0, kOp,
              ": kl_factor must be finite and >= 0; got ", kl_factor);

  // Γ per layer; which layers have a bias follows from qa's size (in + 1).
  std::vector<at::Tensor> gammas;
  std::vector<int> bias_of(layers, -1);
  gammas.reserve(layers);
  size_t next_bias = 0;
  for (size_t i = 0; i < layers; ++i) {
    const at::Tensor& w = weight_grads[i];
    const auto name = item("weight_grads", i);
    // Any floating dtype (a bf16 model's gradients too): Γ is built in qa's dtype.
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), kOp, ": ", name,
                " must be a floating-point tensor; got ", w.scalar_type());
    TORCH_CHECK(w.dim() >= 1 && qg[i].dim() == 2 && w.size(0) == qg[i].size(0), kOp, ": ", name,
                " must have qg[", i, "].size(0) rows; got shape ", w.sizes(), " for qg of shape ",
                qg[i].sizes());
    const int64_t out = w.size(0), in = out == 0 ? 0 : w.numel() / out;
    at::Tensor gamma = w.reshape({out, in});
    TORCH_CHECK(qa[i].dim() == 2 && (qa[i].size(0) == in || qa[i].size(0) == in + 1), kOp,
                ": qa[", i, "] must be (in, in) or (in + 1, in + 1) with a bias, in = ", in,
                " for ", name, " of shape ", w.sizes(), "; got ", qa[i].sizes());
    if (qa[i].size(0) == in + 1) {
      TORCH_CHECK(next_bias < bias_grads.size(), kOp, ": qa[", i,
                  "] has a bias row but bias_grads holds only ", bias_grads.size(),
                  " tensors (one per layer with a bias, in layer order)");
      const at::Tensor& b = bias_grads[next_bias];
      TORCH_CHECK(b.numel() == out, kOp, ": ", item("bias_grads", next_bias), " must have ", out,
                  " elements (the rows of ", name, "); got shape ", b.sizes());
      check_same_dtype(b, w, kOp, item("bias_grads", next_bias).c_str(), name.c_str());
      check_same_device(b, w, kOp, item("bias_grads", next_bias).c_str(), name.c_str());
      bias_of[i] = static_cast<int>(next_bias++);
      gamma = at::cat({gamma, b.reshape({out, 1})}, 1);
    }
    gammas.push_back(gamma.to(qa[i].scalar_type()));
  }
  TORCH_CHECK(next_bias == bias_grads.size(), kOp, ": bias_grads holds ", bias_grads.size(),
              " tensors but only ", next_bias, " layers have a bias row in qa");

  // Everything that can fail has run by now: nothing is written before it.
  std::vector<at::Tensor> precond = call_eigen_precondition(gammas, qa, da, qg, dg, damping);
  const auto scalar_options = at::TensorOptions().dtype(at::kDouble);
  if (layers == 0) return at::ones({}, scalar_options);
  // nu = min(1, sqrt(kl_clip / |vg|)), and 1 when vg is 0 or not finite.
  at::Tensor nu = at::ones({}, scalar_options.device(precond[0].device()));
  bool scale = kl_clip > 0;
  if (scale) {
    const at::Tensor vg = call_kl_clip_sum(precond, gammas).mul(kl_factor).abs();
    if (vg.is_cpu()) {  // no device to wait for: decide on the host, skip a scale by 1
      const double v = vg.item<double>();
      scale = v != 0.0 && std::isfinite(v) && kl_clip < v;
      if (scale) nu.fill_(std::sqrt(kl_clip / v));
    } else {
      const at::Tensor clipped = vg.reciprocal().mul_(kl_clip).sqrt_().clamp_max_(1.0);
      nu = at::where(at::isfinite(vg).logical_and(vg.ne(0)), clipped, nu);
    }
  }
  for (size_t i = 0; i < layers; ++i) {
    at::Tensor p = precond[i];
    if (scale) p.mul_(nu);  // a 0-d tensor: P keeps its dtype
    at::Tensor w = weight_grads[i];
    const int64_t in = p.size(1) - (bias_of[i] >= 0 ? 1 : 0);
    write_back(w, p.narrow(1, 0, in));
    if (bias_of[i] >= 0) {
      at::Tensor b = bias_grads[static_cast<size_t>(bias_of[i])];
      write_back(b, p.select(1, in));
    }
  }
  return nu;
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CompositeExplicitAutograd, m) {
  m.impl("precondition_grads_", &precondition_grads);
}

}  // namespace kfac_ext
