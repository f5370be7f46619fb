#include "symmetric.h"

#include <ATen/Parallel.h>
#include <algorithm>

namespace kfac_ext::cpu {
namespace {

// Below this size a diagonal block is computed whole: splitting further saves
// fewer FLOPs than the smaller GEMMs lose in efficiency (measured: leaves of
// 64..192 are within noise of one another on AVX-512 MKL; 32 is slower).
constexpr int64_t kLeaf = 128;
// Split points are multiples of this, keeping the blocks aligned for the GEMM kernels.
constexpr int64_t kAlign = 32;

void gemm_tn(at::Tensor c, const at::Tensor& a1, const at::Tensor& a2, double alpha, double beta) {
  // c <- beta*c + alpha * a1^T a2, written straight into the view c (self and
  // out are the same tensor, so addmm neither copies nor reallocates).
  at::addmm_out(c, c, a1.t(), a2, beta, alpha);
}

}  // namespace

void syrk_upper(at::Tensor c, const at::Tensor& a, double alpha, double beta) {
  const int64_t n = c.size(0);
  if (n <= kLeaf) {
    gemm_tn(c, a, a, alpha, beta);
    return;
  }
  // [c11 c12; . c22]: two half-size triangles and one full off-diagonal GEMM.
  const int64_t h = (n / 2 + kAlign - 1) / kAlign * kAlign;
  const auto a1 = a.slice(1, 0, h);
  const auto a2 = a.slice(1, h, n);
  auto rows1 = c.slice(0, 0, h);
  gemm_tn(rows1.slice(1, h, n), a1, a2, alpha, beta);
  syrk_upper(rows1.slice(1, 0, h), a1, alpha, beta);
  syrk_upper(c.slice(0, h, n).slice(1, h, n), a2, alpha, beta);
}

void mirror_upper_to_lower(at::Tensor c) {
  const int64_t n = c.size(0);
  const int64_t s0 = c.stride(0), s1 = c.stride(1);
  // Tiles keep both the read (a column of the upper triangle) and the write
  // (a row of the lower one) in cache.
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "mirror_upper_to_lower", [&] {
    scalar_t* p = c.data_ptr<scalar_t>();
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t ti = t0; ti < t1; ++ti) {
        const int64_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
        for (int64_t j0 = 0; j0 <= i0; j0 += kTile) {
          const int64_t j1 = std::min(n, j0 + kTile);
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t jend = std::min(j1, i);
            for (int64_t j = j0; j < jend; ++j) p[i * s0 + j * s1] = p[j * s0 + i * s1];
          }
        }
      }
    });
  });
}

}  // namespace kfac_ext::cpu
