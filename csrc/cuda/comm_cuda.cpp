// CUDA kernels of pack_triu, unpack_triu_ (factor communication buffers stay
// on the device) and kl_clip_sum (float64 result left on the device: the
// caller decides when, if ever, to bring it to the host).
#include "glue.h"

#include <algorithm>
#include <vector>

namespace kfac_ext::cuda {
namespace {

void check_mats_on_cuda(at::TensorList mats, const char* op) {
  for (size_t i = 0; i < mats.size(); ++i) check_cuda(mats[i], op, item("mats", i));
}

// Calls launch(list) for consecutive chunks of at most kListChunk matrices.
template <typename T, typename Launch>
void for_each_chunk(at::TensorList mats, Launch launch) {
  int64_t offset = 0;
  for (size_t first = 0; first < mats.size(); first += kListChunk) {
    TriangleList<T> list{};
    const size_t count = std::min<size_t>(kListChunk, mats.size() - first);
    for (size_t k = 0; k < count; ++k) {
      const at::Tensor& m = mats[first + k];
      const int64_t n = m.size(0);
      list.mats[k] = static_cast<T*>(m.data_ptr());
      list.n[k] = n;
      list.stride0[k] = m.stride(0);
      list.stride1[k] = m.stride(1);
      list.offset[k] = offset;
      list.max_n = std::max(list.max_n, n);
      offset += n * (n + 1) / 2;
    }
    list.count = static_cast<int>(count);
    launch(list);
  }
}

at::Tensor pack_triu_cuda(at::TensorList mats) {
  constexpr const char* op = "pack_triu";
  TORCH_CHECK(!mats.empty(), op, ": mats must hold at least one matrix (the result's dtype "
              "and device come from it)");
  check_mats_on_cuda(mats, op);
  check_triu_mats(mats, op);
  const c10::cuda::CUDAGuard guard(mats[0].device());
  auto packed = at::empty({packed_triu_size(mats)}, mats[0].options());
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), op, [&] {
    scalar_t* out = ptr<scalar_t>(packed);
    for_each_chunk<scalar_t>(mats, [&](const TriangleList<scalar_t>& list) {
      pack_triu<scalar_t>(list, out, current_stream());
    });
  });
  return packed;
}

void unpack_triu_cuda(const at::Tensor& packed, at::TensorList mats, double scale) {
  constexpr const char* op = "unpack_triu_";
  check_mats_on_cuda(mats, op);
  check_unpack_triu_args(packed, mats);
  if (mats.empty()) return;
  const c10::cuda::CUDAGuard guard(mats[0].device());
  const auto src = packed.contiguous();
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), op, [&] {
    const scalar_t* in = cptr<scalar_t>(src);
    for_each_chunk<scalar_t>(mats, [&](const TriangleList<scalar_t>& list) {
      unpack_triu<scalar_t>(list, in, static_cast<scalar_t>(scale), current_stream());
    });
  });
}

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

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) {
  m.impl("pack_triu", &pack_triu_cuda);
  m.impl("unpack_triu_", &unpack_triu_cuda);
  m.impl("kl_clip_sum", &kl_clip_sum_cuda);
}

}  // namespace kfac_ext::cuda
