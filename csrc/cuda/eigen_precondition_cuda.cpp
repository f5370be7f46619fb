// CUDA kernel of eigen_precondition: per layer
//   P = Q_G [(Q_G^T Γ Q_A) / (d_G d_A^T + damping)] Q_A^T.
// Layers of equal (out, in) shape and dtype are stacked; the first three
// products are strided-batched GEMMs over the group with the eigenvalue
// division between them, the last one writes each layer's own output (ops
// may not return outputs that alias one another). No host synchronisation.
#include "glue.h"

#include <map>
#include <tuple>
#include <vector>

namespace kfac_ext::cuda {
namespace {

constexpr const char* kOp = "eigen_precondition";

// The members' tensors as one contiguous (B, ...) batch: a view when the
// group has a single contiguous member, else one stacked copy.
at::Tensor gather(at::TensorList list, const std::vector<size_t>& members) {
  if (members.size() == 1) return list[members[0]].contiguous().unsqueeze(0);
  std::vector<at::Tensor> parts;
  parts.reserve(members.size());
  for (size_t i : members) parts.push_back(list[i]);
  return at::stack(parts);
}

template <typename T>
void precondition_group(at::TensorList grads, at::TensorList qa_list, at::TensorList da_list,
                        at::TensorList qg_list, at::TensorList dg_list,
                        const std::vector<size_t>& members, double damping,
                        std::vector<at::Tensor>& result) {
  const at::Tensor g = gather(grads, members), qa = gather(qa_list, members),
                   da = gather(da_list, members), qg = gather(qg_list, members),
                   dg = gather(dg_list, members);
  const int64_t batch = g.size(0), out = g.size(1), in = g.size(2);
  const int64_t sg = out * in, sa = in * in, so = out * out;
  auto h = blas_handle();
  at::Tensor t = at::empty_like(g);
  at::Tensor v = at::empty_like(g);
  // t = Q_G^T Γ;  v = t Q_A;  v /= d_G d_A^T + λ;  t = Q_G v.
  gemm_batched<T>(h, true, false, out, in, out, T(1), cptr<T>(qg), out, so, cptr<T>(g), in, sg,
                  T(0), ptr<T>(t), in, sg, batch);
  gemm_batched<T>(h, false, false, out, in, in, T(1), cptr<T>(t), in, sg, cptr<T>(qa), in, sa,
                  T(0), ptr<T>(v), in, sg, batch);
  divide_by_eigenvalues<T>(ptr<T>(v), cptr<T>(dg), cptr<T>(da), batch, out, in,
                           static_cast<T>(damping), current_stream());
  gemm_batched<T>(h, false, false, out, in, out, T(1), cptr<T>(qg), out, so, cptr<T>(v), in, sg,
                  T(0), ptr<T>(t), in, sg, batch);
  // P = (Q_G V2) Q_A^T, per layer into its own tensor.
  for (size_t k = 0; k < members.size(); ++k) {
    const auto kk = static_cast<int64_t>(k);
    at::Tensor p = at::empty({out, in}, g.options());
    gemm_batched<T>(h, false, true, out, in, in, T(1), cptr<T>(t) + kk * sg, in, sg,
                    cptr<T>(qa) + kk * sa, in, sa, T(0), ptr<T>(p), in, sg, 1);
    result[members[k]] = p;
  }
}

std::vector<at::Tensor> eigen_precondition_cuda(at::TensorList grads, at::TensorList qa,
                                                at::TensorList da, at::TensorList qg,
                                                at::TensorList dg, double damping) {
  const size_t layers = grads.size();
  check_layer_lists(kOp, "grads", layers, qa, da, qg, dg);
  check_damping(damping, kOp);
  for (size_t i = 0; i < layers; ++i) {
    check_cuda(grads[i], kOp, item("grads", i));
    check_precondition_layer(i, grads[i], qa[i], da[i], qg[i], dg[i], grads[0]);
  }
  std::vector<at::Tensor> result(layers);
  if (layers == 0) return result;
  const c10::cuda::CUDAGuard guard(grads[0].device());

  std::map<std::tuple<int64_t, int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < layers; ++i) {
    groups[{grads[i].size(0), grads[i].size(1), static_cast<int>(grads[i].scalar_type())}]
        .push_back(i);
  }
  for (const auto& [key, members] : groups) {
    if (std::get<0>(key) == 0 || std::get<1>(key) == 0) {
      for (size_t i : members) result[i] = at::empty_like(grads[i], at::MemoryFormat::Contiguous);
      continue;
    }
    AT_DISPATCH_FLOATING_TYPES(grads[members[0]].scalar_type(), kOp, [&] {
      precondition_group<scalar_t>(grads, qa, da, qg, dg, members, damping, result);
    });
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) { m.impl("eigen_precondition", &eigen_precondition_cuda); }

}  // namespace kfac_ext::cuda
