// Upper-triangle packing of symmetric matrices for communication: only
// n(n+1)/2 of the n^2 entries of each factor travel. pack_triu concatenates
// the row-major upper triangles (diagonal included) into one flat buffer;
// unpack_triu_ writes scale * those values back, mirrored, into the matrices.
// Both run one parallel pass over all rows of all matrices; unpack_triu_ then
// mirrors tile by tile. (A single pass writing each tile and its mirror
// together measured 1.5-2x slower: short rows, and stores the compiler cannot
// vectorise.)
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "symmetric.h"

namespace kfac_ext::cpu {
namespace {

// Where each matrix's rows start in the global row numbering, and where each
// matrix's triangle starts in the packed buffer.
struct Layout {
  std::vector<int64_t> first_row;  // size mats+1
  std::vector<int64_t> offset;     // size mats+1
};

Layout layout_of(at::TensorList mats) {
  Layout l{{0}, {0}};
  for (const auto& m : mats) {
    const int64_t n = m.size(0);
    l.first_row.push_back(l.first_row.back() + n);
    l.offset.push_back(l.offset.back() + n * (n + 1) / 2);
  }
  return l;
}

// Calls fn(matrix, row, packed_offset_of_row) for every row of every matrix,
// in parallel over the global row numbering.
template <typename Fn>
void for_each_row(const Layout& l, Fn fn) {
  const int64_t rows = l.first_row.back();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    size_t m = std::upper_bound(l.first_row.begin(), l.first_row.end(), r0) - l.first_row.begin() - 1;
    for (int64_t r = r0; r < r1; ++r) {
      while (r >= l.first_row[m + 1]) ++m;
      const int64_t n = l.first_row[m + 1] - l.first_row[m];
      const int64_t i = r - l.first_row[m];
      // Rows 0..i-1 of the triangle hold n + (n-1) + ... + (n-i+1) entries.
      fn(m, i, l.offset[m] + i * n - i * (i - 1) / 2);
    }
  });
}

at::Tensor pack_triu_cpu(at::TensorList mats) {
  constexpr const char* op = "pack_triu";
  TORCH_CHECK(!mats.empty(), op, ": mats must hold at least one matrix (the result's dtype "
              "and device come from it)");
  check_triu_mats(mats, op);
  const auto l = layout_of(mats);
  auto packed = at::empty({l.offset.back()}, mats[0].options());
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), op, [&] {
    scalar_t* out = packed.data_ptr<scalar_t>();
    std::vector<const scalar_t*> base;
    for (const auto& m : mats) base.push_back(m.const_data_ptr<scalar_t>());
    for_each_row(l, [&](size_t m, int64_t i, int64_t pos) {
      const int64_t n = mats[m].size(0), s0 = mats[m].stride(0), s1 = mats[m].stride(1);
      const scalar_t* src = base[m] + i * s0;
      scalar_t* dst = out + pos;
      if (s1 == 1) {
        std::copy(src + i, src + n, dst);
      } else {
        for (int64_t j = i; j < n; ++j) dst[j - i] = src[j * s1];
      }
    });
  });
  return packed;
}

void unpack_triu_cpu(const at::Tensor& packed, at::TensorList mats, double scale) {
  constexpr const char* op = "unpack_triu_";
  check_unpack_triu_args(packed, mats);
  const auto l = layout_of(mats);
  const auto src_packed = packed.contiguous();
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), op, [&] {
    const scalar_t* in = src_packed.const_data_ptr<scalar_t>();
    const auto s = static_cast<scalar_t>(scale);
    std::vector<scalar_t*> base;
    for (const auto& m : mats) base.push_back(m.data_ptr<scalar_t>());
    for_each_row(l, [&](size_t m, int64_t i, int64_t pos) {
      const int64_t n = mats[m].size(0), s0 = mats[m].stride(0), s1 = mats[m].stride(1);
      scalar_t* dst = base[m] + i * s0;
      const scalar_t* src = in + pos - i;  // src[j] is entry (i, j)
      for (int64_t j = i; j < n; ++j) dst[j * s1] = s * src[j];
    });
  });
  // The lower triangles, tile by tile (cache-friendly transposition).
  for (const auto& m : mats) mirror_upper_to_lower(m);
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) {
  m.impl("pack_triu", &pack_triu_cpu);
  m.impl("unpack_triu_", &unpack_triu_cpu);
}

}  // namespace kfac_ext::cpu
