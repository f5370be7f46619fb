// AVX-512 kernel of channel_gram.h, chosen at run time (see avx512.h).
#include "channel_gram.h"

#include "avx512.h"

#include <algorithm>
#include <cstdlib>

namespace kfac_ext::channel_gram {

bool available() { return avx512::cpu_supported(); }

#ifdef KFAC_EXT_HAVE_AVX512_KERNEL
namespace {

constexpr int64_t kLanes = 16;
constexpr int kBlock = 4;  // channels per side of a register block: 16 accumulators, 8 loads per 16 FMAs

// Positions a group of samples covers before its sums are flushed: the
// group's rows (C x positions floats, at most 512 KB) stay in L2 while every
// block pair re-reads them, and the flush (16 horizontal sums per block pair)
// is small next to the group's FMAs (2048 positions: 2048 FMAs per 16 sums).
constexpr int64_t kGroupPositions = 2048;
constexpr int64_t kGroupFloats = 131072;

// Sum of the 16 lanes (128-bit halves folded with lane shuffles: GCC 12's
// _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its own header).
__attribute__((target("avx512f"))) inline float lane_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 q = _mm512_castps512_ps128(v);
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}

// The 4 x 4 channel pairs (c0 + i, d0 + j) summed over `samples` samples
// into acc. Rows past C read row C - 1 (valid memory) and are not stored.
__attribute__((target("avx512f"))) void block_pair(const float* x, int64_t samples, int64_t C, int64_t len,
                                                  int64_t c0, int64_t d0, double* acc) {
  int64_t c_off[kBlock], d_off[kBlock];
  for (int i = 0; i < kBlock; ++i) {
    c_off[i] = std::min<int64_t>(c0 + i, C - 1) * len;
    d_off[i] = std::min<int64_t>(d0 + i, C - 1) * len;
  }
  __m512 sum[kBlock][kBlock];
#pragma GCC unroll 4
  for (int i = 0; i < kBlock; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kBlock; ++j) sum[i][j] = _mm512_setzero_ps();
  const int64_t full = len / kLanes * kLanes;
  const __mmask16 tail = static_cast<__mmask16>((1u << (len - full)) - 1u);
  for (int64_t n = 0; n < samples; ++n) {
    const float* base = x + n * C * len;
    // Whole vectors, then the tail with masked loads (zeros add nothing).
    for (int64_t t = 0; t <= full; t += kLanes) {
      const __mmask16 m = t < full ? static_cast<__mmask16>(0xFFFF) : tail;
      if (m == 0) break;
      __m512 a[kBlock], b[kBlock];
#pragma GCC unroll 4
      for (int i = 0; i < kBlock; ++i) {
        a[i] = _mm512_maskz_loadu_ps(m, base + c_off[i] + t);
        b[i] = _mm512_maskz_loadu_ps(m, base + d_off[i] + t);
      }
#pragma GCC unroll 4
      for (int i = 0; i < kBlock; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < kBlock; ++j) sum[i][j] = _mm512_fmadd_ps(a[i], b[j], sum[i][j]);
    }
  }
  for (int i = 0; i < kBlock; ++i)
    for (int j = 0; j < kBlock; ++j) {
      const int64_t c = c0 + i, d = d0 + j;
      if (c < C && d < C && c <= d) acc[c * C + d] += lane_sum(sum[i][j]);
    }
}

}  // namespace

int64_t samples_per_group(int64_t C, int64_t len) {
  const int64_t positions = std::min<int64_t>(kGroupPositions, kGroupFloats / std::max<int64_t>(C, 1));
  return std::max<int64_t>(1, positions / std::max<int64_t>(len, 1));
}

void accumulate_float32(const float* x, int64_t samples, int64_t C, int64_t len, double* acc) {
  if (len <= 0) return;
  const int64_t group = samples_per_group(C, len);
  for (int64_t n0 = 0; n0 < samples; n0 += group) {
    const int64_t count = std::min(group, samples - n0);
    for (int64_t c0 = 0; c0 < C; c0 += kBlock)
      for (int64_t d0 = c0; d0 < C; d0 += kBlock) block_pair(x + n0 * C * len, count, C, len, c0, d0, acc);
  }
}

#else  // not x86-64 with GCC/Clang: no vector kernel, callers use BLAS

int64_t samples_per_group(int64_t, int64_t) { return 1; }

// Callers check available() first.
void accumulate_float32(const float*, int64_t, int64_t, int64_t, double*) { std::abort(); }

#endif

}  // namespace kfac_ext::channel_gram
