// damped_inverses on the CPU: (F + λI)⁻¹ of symmetric positive definite
// factors by recursive blocks whose flops are nearly all GEMMs. LAPACK's
// Cholesky + cholesky_inverse (potrf + potri) runs at 2-13 GFLOP/s (n³ counted)
// on 64-257-row factors with one thread, a GEMM at 30-60 (docs/cost-model.md,
// benchmarks/inverse_ab.py).
//
// Two recursions on M = [[A, Bᵀ], [B, C]] (B the lower-left block), in place:
// 1. Y = L⁻¹, the inverse of the Cholesky factor (M = L Lᵀ):
//      Y_A = L_A⁻¹ (recursively); Z = B Y_Aᵀ (= L_21); S = C − Z Zᵀ (the Schur
//      complement, SPD iff M is); Y_S = L_S⁻¹ (recursively); Y = [[Y_A, 0],
//      [−Y_S Z Y_A, Y_S]].
// 2. M⁻¹ = Yᵀ Y: X_11 = Y_11ᵀ Y_11 (recursively) + Y_21ᵀ Y_21, X_21 = Y_22ᵀ Y_21,
//      X_22 = Y_22ᵀ Y_22 (recursively).
// Along the path of S blocks from the top, where only X is needed, the two are
// merged (full_inverse): T = Z Y_A (= B A⁻¹), X_S = S⁻¹ (recursively), X_21 =
// −X_S T, X_11 = X_A + Tᵀ X_S T: five GEMMs a level where the two take six.
// The Schur complement is formed from Z = L_21 as Cholesky forms it: a block
// Schur inverse with the explicit A⁻¹ (W = A⁻¹ Bᵀ, S = C − B W; fewer flops)
// loses 10-2000× more accuracy at condition numbers of 1e4-1e6
// (docs/cost-model.md). The GEMMs are full (the triangular blocks' zeros
// multiplied too): ~6n³/7 multiply-adds in all against potrf + potri's n³/2,
// at GEMM speed. Blocks of at most leaf + leaf/4 rows use plain loops
// (Cholesky, the triangular inverse, YᵀY) that the compiler vectorises (AVX2 +
// FMA where the CPU has it).
//
// Only the lower triangle of each factor is read (as Cholesky does), and a
// factor is accepted when every Cholesky pivot is positive and finite (a NaN or
// Inf in the lower triangle reaches one: of a leaf, or of a Schur complement's
// leaf) and its inverse is finite; the caller retries the others its own way.
// The result is symmetric (lower triangle mirrored).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace kfac_ext::cpu {
namespace {

constexpr const char* kOp = "damped_inverses";

constexpr int64_t kMaxLeaf = 256;

// In place on the n×n block at a (row stride ld, n <= kMaxLeaf): the lower
// triangle of an SPD block in, Y = L⁻¹ out (zeros above the diagonal); false
// when a Cholesky pivot is not positive and finite.
template <typename T>
inline __attribute__((always_inline)) bool leaf_y_body(T* a, int64_t n, int64_t ld) {
  alignas(64) T c[kMaxLeaf];
  alignas(64) T r[kMaxLeaf];
  // right-looking Cholesky on the lower triangle
  for (int64_t k = 0; k < n; ++k) {
    const T d = a[k * ld + k];
    if (!(d > T(0)) || !std::isfinite(d)) return false;
    const T l = std::sqrt(d), linv = T(1) / l;
    a[k * ld + k] = l;
    for (int64_t i = k + 1; i < n; ++i) c[i] = a[i * ld + k] *= linv;
    for (int64_t i = k + 1; i < n; ++i) {
      T* __restrict ri = a + i * ld;
      const T ci = c[i];
      for (int64_t j = k + 1; j <= i; ++j) ri[j] -= ci * c[j];
    }
  }
  // Y = L⁻¹ row by row: y_i = (e_i − Σ_{k<i} l_ik y_k) / l_ii. The rows of Y above
  // row i are final and zero right of their diagonal, so four of them go into one
  // pass over r (up to the last one's diagonal): a quarter of the loads and stores.
  for (int64_t i = 0; i < n; ++i) {
    T* ri = a + i * ld;
    for (int64_t j = 0; j < i; ++j) r[j] = T(0);
    int64_t k = 0;
    for (; k + 4 <= i; k += 4) {
      const T l0 = ri[k], l1 = ri[k + 1], l2 = ri[k + 2], l3 = ri[k + 3];
      const T* __restrict y0 = a + k * ld;
      const T* __restrict y1 = y0 + ld;
      const T* __restrict y2 = y1 + ld;
      const T* __restrict y3 = y2 + ld;
      for (int64_t j = 0; j <= k + 3; ++j) r[j] -= l0 * y0[j] + l1 * y1[j] + l2 * y2[j] + l3 * y3[j];
    }
    for (; k < i; ++k) {
      const T lik = ri[k];
      const T* __restrict yk = a + k * ld;
      for (int64_t j = 0; j <= k; ++j) r[j] -= lik * yk[j];
    }
    const T inv = T(1) / ri[i];
    for (int64_t j = 0; j < i; ++j) ri[j] = r[j] * inv;
    ri[i] = inv;
    for (int64_t j = i + 1; j < n; ++j) ri[j] = T(0);
  }
  return true;
}

// In place on the n×n block at a: Y (lower triangular) in, the lower triangle
// of Yᵀ Y out (x_ij = Σ_{k≥i} y_ki y_kj), through a row buffer per output row.
template <typename T>
inline __attribute__((always_inline)) void leaf_lauum_body(T* a, int64_t n, int64_t ld) {
  alignas(64) T r[kMaxLeaf];
  // row i of the result needs rows k >= i of Y only: fill rows top-down
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) r[j] = T(0);
    int64_t k = i;
    for (; k + 4 <= n; k += 4) {  // four rows of Y a pass over r
      const T* __restrict y0 = a + k * ld;
      const T* __restrict y1 = y0 + ld;
      const T* __restrict y2 = y1 + ld;
      const T* __restrict y3 = y2 + ld;
      const T c0 = y0[i], c1 = y1[i], c2 = y2[i], c3 = y3[i];
      for (int64_t j = 0; j <= i; ++j) r[j] += c0 * y0[j] + c1 * y1[j] + c2 * y2[j] + c3 * y3[j];
    }
    for (; k < n; ++k) {
      const T* __restrict yk = a + k * ld;
      const T yki = yk[i];
      for (int64_t j = 0; j <= i; ++j) r[j] += yki * yk[j];
    }
    T* ri = a + i * ld;
    for (int64_t j = 0; j <= i; ++j) ri[j] = r[j];
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KFAC_EXT_LEAF_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) bool leaf_y_avx2(T* a, int64_t n, int64_t ld) {
  return leaf_y_body(a, n, ld);
}
template <typename T>
__attribute__((target("avx2,fma"))) void leaf_lauum_avx2(T* a, int64_t n, int64_t ld) {
  leaf_lauum_body(a, n, ld);
}
inline bool have_avx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2;
}
#endif

template <typename T>
bool leaf_y(T* a, int64_t n, int64_t ld) {
#ifdef KFAC_EXT_LEAF_AVX2
  if (have_avx2()) return leaf_y_avx2(a, n, ld);
#endif
  return leaf_y_body(a, n, ld);
}

template <typename T>
void leaf_lauum(T* a, int64_t n, int64_t ld) {
#ifdef KFAC_EXT_LEAF_AVX2
  if (have_avx2()) return leaf_lauum_avx2(a, n, ld);
#endif
  leaf_lauum_body(a, n, ld);
}

// A block of at most leaf + leaf/4 rows goes to the loops (65 = 64 + 1 would
// cost more in ten small ATen calls than its extra row in the loops). Larger
// ones split at the largest power of two below n (256 = 128 + 128, 200 =
// 128 + 72), so that the large block stays GEMM-friendly, or at half that when
// the remainder would be under leaf/4 rows (257 = 128 + 129, 129 = 64 + 65).
bool is_leaf(int64_t n, int64_t leaf) { return n <= leaf + leaf / 4; }

int64_t split(int64_t n, int64_t leaf) {
  int64_t h = 1;
  while (h * 2 < n) h *= 2;
  return n - h < leaf / 4 && h >= 2 ? h / 2 : h;
}

struct Blocks {
  at::Tensor a, b, bt, c;  // [[a, bt], [b, c]], b the lower-left block (m×h)
  int64_t h, m;
};

Blocks blocks(const at::Tensor& x, int64_t leaf) {
  const int64_t n = x.size(0), h = split(n, leaf), m = n - h;
  return {x.narrow(0, 0, h).narrow(1, 0, h), x.narrow(0, h, m).narrow(1, 0, h), x.narrow(0, 0, h).narrow(1, h, m),
          x.narrow(0, h, m).narrow(1, h, m), h, m};
}

// Recursion 1 on an n×n view x (row stride ld, unit column stride): lower
// triangle of the SPD block in, Y = L⁻¹ out (zeros above the diagonal).
template <typename T>
bool inverse_cholesky(const at::Tensor& x, int64_t leaf) {
  const int64_t n = x.size(0);
  if (is_leaf(n, leaf)) return leaf_y(x.data_ptr<T>(), n, x.stride(0));
  Blocks k = blocks(x, leaf);
  if (!inverse_cholesky<T>(k.a, leaf)) return false;
  const at::Tensor z = at::mm(k.b, k.a.t());  // L_21 = B Y_Aᵀ, m×h
  k.c.addmm_(z, z.t(), 1, -1);                // S = C − L_21 L_21ᵀ
  if (!inverse_cholesky<T>(k.c, leaf)) return false;
  at::mm_out(k.b, k.c, at::mm(z, k.a));  // Y_S (L_21 Y_A)
  k.b.neg_();
  k.bt.zero_();
  return true;
}

// Recursion 2: Y (lower triangular, zeros above) in, the lower triangle of Yᵀ Y out.
template <typename T>
void lauum(const at::Tensor& x, int64_t leaf) {
  const int64_t n = x.size(0);
  if (is_leaf(n, leaf)) return leaf_lauum(x.data_ptr<T>(), n, x.stride(0));
  Blocks k = blocks(x, leaf);
  lauum<T>(k.a, leaf);
  k.a.addmm_(k.b.t(), k.b);        // X_11 = Y_11ᵀ Y_11 + Y_21ᵀ Y_21
  k.b.copy_(at::mm(k.c.t(), k.b));  // X_21 = Y_22ᵀ Y_21
  lauum<T>(k.c, leaf);
}

// Lower triangle into the upper one, in place, on a view with row stride ld.
template <typename T>
void symmetrize(const at::Tensor& x) {
  const int64_t n = x.size(0), ld = x.stride(0);
  T* a = x.data_ptr<T>();
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) a[j * ld + i] = a[i * ld + j];
}

// Both recursions in one: lower triangle of the SPD block in, the lower triangle
// of its inverse out. At this level only X is needed, not Y, so with T = Z Y_A
// (= B A⁻¹): X_21 = −X_S T and X_11 = X_A + Tᵀ X_S T, five GEMMs where
// inverse_cholesky + lauum take six.
template <typename T>
bool full_inverse(const at::Tensor& x, int64_t leaf) {
  const int64_t n = x.size(0);
  if (is_leaf(n, leaf)) {
    T* p = x.data_ptr<T>();
    if (!leaf_y(p, n, x.stride(0))) return false;
    leaf_lauum(p, n, x.stride(0));
    return true;
  }
  Blocks k = blocks(x, leaf);
  if (!inverse_cholesky<T>(k.a, leaf)) return false;
  const at::Tensor z = at::mm(k.b, k.a.t());  // L_21 = B Y_Aᵀ, m×h
  k.c.addmm_(z, z.t(), 1, -1);                // S = C − L_21 L_21ᵀ
  const at::Tensor t = at::mm(z, k.a);        // T = L_21 Y_A = B A⁻¹
  lauum<T>(k.a, leaf);                        // X_A = Y_Aᵀ Y_A (lower triangle)
  if (!full_inverse<T>(k.c, leaf)) return false;
  symmetrize<T>(k.c);           // X_S, whole, for the GEMM
  at::mm_out(k.b, k.c, t);      // X_S T
  k.a.addmm_(t.t(), k.b);       // X_11 = X_A + Tᵀ X_S T
  k.b.neg_();                   // X_21 = −X_S T
  return true;
}

// Mirror the lower triangle into the upper one (tile by tile) and check that
// every entry is finite.
template <typename T>
bool mirror_check(T* a, int64_t n) {
  constexpr int64_t kTile = 32;
  bool finite = true;
  for (int64_t i0 = 0; i0 < n; i0 += kTile)
    for (int64_t j0 = 0; j0 <= i0; j0 += kTile) {
      const int64_t i1 = std::min(n, i0 + kTile), j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < std::min(j1, i + 1); ++j) {
          const T v = a[i * n + j];
          finite &= std::isfinite(v);
          a[j * n + i] = v;
        }
    }
  return finite;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> damped_inverses_cpu(at::TensorList factors, double damping,
                                                                    int64_t leaf) {
  TORCH_CHECK(leaf >= 1 && leaf + leaf / 4 <= kMaxLeaf, kOp, ": leaf must be >= 1 and leaf + leaf / 4 <= ", kMaxLeaf,
              "; got ", leaf);
  for (size_t k = 0; k < factors.size(); ++k) {
    const std::string name = "factors[" + std::to_string(k) + "]";
    check_square(factors[k], kOp, name);
    check_float(factors[k], kOp, name.c_str());
    check_same_device(factors[k], factors[0], kOp, name.c_str(), "factors[0]");
  }
  std::vector<at::Tensor> out;
  out.reserve(factors.size());
  at::Tensor ok = at::empty({static_cast<int64_t>(factors.size())}, at::kBool);
  bool* okp = ok.data_ptr<bool>();
  for (size_t k = 0; k < factors.size(); ++k) {
    at::Tensor x = factors[k].contiguous().clone();
    const int64_t n = x.size(0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kOp, [&] {
      scalar_t* p = x.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) p[i * n + i] += static_cast<scalar_t>(damping);
      const bool good = n == 0 || full_inverse<scalar_t>(x, leaf);
      okp[k] = good && (n == 0 || mirror_check<scalar_t>(p, n));
    });
    out.push_back(std::move(x));
  }
  return {std::move(out), ok};
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("damped_inverses", &damped_inverses_cpu); }

}  // namespace kfac_ext::cpu
