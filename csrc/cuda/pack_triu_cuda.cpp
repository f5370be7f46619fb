// CUDA kernels of pack_triu and unpack_triu_ (factor communication buffers
// stay on the device): argument checks, then pack_triu.cu's launches.
#include "glue.h"

#include <algorithm>

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

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) {
  m.impl("pack_triu", &pack_triu_cuda);
  m.impl("unpack_triu_", &unpack_triu_cuda);
}

}  // namespace kfac_ext::cuda
