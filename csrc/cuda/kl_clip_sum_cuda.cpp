// CUDA kernel of kl_clip_sum: argument checks, then kl_clip_sum.cu's
// deterministic float64 reduction. The result stays on the device: the caller
// decides when, if ever, to bring it to the host.
#include "glue.h"

#include <algorithm>
#include <vector>

namespace kfac_ext::cuda {
namespace {

at::Tensor kl_clip_sum_cuda(at::TensorList precond, at::TensorList grads) {
  constexpr const char* op = "kl_clip_sum";
  for (size_t i = 0; i < precond.size(); ++i) check_cuda(precond[i], op, item("precond", i));
  check_kl_clip_sum_args(precond, grads);
  if (precond.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kDouble));
  const c10::cuda::CUDAGuard guard(precond[0].device());
  const auto stream = current_stream();
  // Gradients and their preconditioned versions are contiguous in practice;
  // anything else is made so (a copy, only then). The copies must outlive the
  // launches only as far as the host is concerned: they are freed into the
  // current stream's pool, behind the kernels that read them.
  std::vector<at::Tensor> p, g;
  for (size_t i = 0; i < precond.size(); ++i) {
    p.push_back(precond[i].contiguous());
    g.push_back(grads[i].contiguous());
  }
  const int64_t entries = static_cast<int64_t>(p.size());
  const auto f64 = precond[0].options().dtype(at::kDouble);
  auto partial = at::empty({entries * dot_partials_per_entry()}, f64);
  auto total = at::empty({}, f64);
  AT_DISPATCH_FLOATING_TYPES(p[0].scalar_type(), op, [&] {
    for (int64_t first = 0; first < entries; first += kListChunk) {
      DotList<scalar_t> list{};
      const int64_t count = std::min<int64_t>(kListChunk, entries - first);
      for (int64_t k = 0; k < count; ++k) {
        list.a[k] = cptr<scalar_t>(p[first + k]);
        list.b[k] = cptr<scalar_t>(g[first + k]);
        list.numel[k] = p[first + k].numel();
        list.max_numel = std::max(list.max_numel, list.numel[k]);
      }
      list.count = static_cast<int>(count);
      dot_partials<scalar_t>(list, first, ptr<double>(partial), stream);
    }
  });
  sum_partials(ptr<double>(partial), partial.numel(), ptr<double>(total), stream);
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) { m.impl("kl_clip_sum", &kl_clip_sum_cuda); }

}  // namespace kfac_ext::cuda
