// AVX-512 kernel of shifted_gram.h, chosen at run time (see avx512.h).
#include "shifted_gram.h"

#include "avx512.h"

#include <algorithm>
#include <cstdlib>

namespace kfac_ext::shifted_gram {

bool available() { return avx512::cpu_supported(); }

#ifdef KFAC_EXT_HAVE_AVX512_KERNEL
namespace {

constexpr int64_t kLanes = 16;

// Lanes of vector v of a column block starting at column b0 that hold real
// columns (< C); the rest are masked off on load and store.
inline __mmask16 lane_mask(int64_t C, int64_t b0, int v) {
  const int64_t cols = C - (b0 + v * kLanes);
  if (cols >= kLanes) return 0xFFFF;
  return cols <= 0 ? 0 : static_cast<__mmask16>((1u << cols) - 1u);
}

// acc[a][b] += sum over the positions q of `runs` of x[q][a] * y[q][b] for the RA rows starting at
// a0 (all < C) and the NB*16 columns starting at b0 (masked at C). The RA x NB
// accumulators (<= 24 of the 32 vector registers) stay in registers for the
// whole block; the RA broadcasts are constant offsets from one pointer.
template <int RA, int NB>
__attribute__((target("avx512f"))) void block_pass(const float* x, const float* y, Runs runs, int64_t C,
                                                  int64_t a0, int64_t b0, double* acc) {
  __m512 sum[RA][NB];
  __mmask16 mask[NB];
  // The constant-bound loops are unrolled before GCC decides what lives in
  // registers; left rolled, it keeps `sum` in memory and stores it on every
  // iteration of the position loop.
#pragma GCC unroll 8
  for (int v = 0; v < NB; ++v) mask[v] = lane_mask(C, b0, v);
#pragma GCC unroll 32
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) sum[r][v] = _mm512_setzero_ps();
  for (int64_t run = 0; run < runs.count; ++run) {
    const float* xq = x + run * runs.stride * C + a0;
    const float* yq = y + run * runs.stride * C + b0;
    for (int64_t q = 0; q < runs.len; ++q, xq += C, yq += C) {
      __m512 b[NB];
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) b[v] = _mm512_maskz_loadu_ps(mask[v], yq + v * kLanes);
#pragma GCC unroll 32
      for (int r = 0; r < RA; ++r) {
        const __m512 a = _mm512_set1_ps(xq[r]);
#pragma GCC unroll 8
        for (int v = 0; v < NB; ++v) sum[r][v] = _mm512_fmadd_ps(a, b[v], sum[r][v]);
      }
    }
  }
  // Widen to double and add into acc, lane by lane from a plain array (a
  // partial last vector then needs no masked intrinsics; this runs once per
  // block of up to 512 positions, off the hot loop: a vectorised flush
  // measured no faster).
  alignas(64) float lanes[RA][NB][kLanes];
#pragma GCC unroll 32
  for (int r = 0; r < RA; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) _mm512_store_ps(lanes[r][v], sum[r][v]);
  for (int r = 0; r < RA; ++r) {
    double* dst_row = acc + (a0 + r) * C + b0;
    for (int v = 0; v < NB; ++v) {
      const int64_t cols = std::min<int64_t>(kLanes, C - b0 - v * kLanes);
      for (int64_t j = 0; j < cols; ++j) dst_row[v * kLanes + j] += lanes[r][v][j];
    }
  }
}

// The last `rows` (< R) rows starting at a0: one block_pass with exactly that many.
template <int R, int NB>
__attribute__((target("avx512f"))) void tail_rows(int64_t rows, const float* x, const float* y, Runs runs,
                                                 int64_t C, int64_t a0, int64_t b0, double* acc) {
  if constexpr (R > 1) {
    if (rows == R - 1) return block_pass<R - 1, NB>(x, y, runs, C, a0, b0, acc);
    tail_rows<R - 1, NB>(rows, x, y, runs, C, a0, b0, acc);
  }
}

// All C rows against the NB column vectors at b0, RA rows at a time.
template <int RA, int NB>
__attribute__((target("avx512f"))) void column_block(const float* x, const float* y, Runs runs, int64_t C,
                                                    int64_t b0, double* acc) {
  int64_t a0 = 0;
  for (; a0 + RA <= C; a0 += RA) block_pass<RA, NB>(x, y, runs, C, a0, b0, acc);
  if (a0 < C) tail_rows<RA, NB>(C - a0, x, y, runs, C, a0, b0, acc);
}

// Every (row block, column block) pass over the positions of `runs`.
__attribute__((target("avx512f"))) void all_passes(const float* x, const float* y, Runs runs, int64_t C,
                                                  double* acc) {
  for (int64_t b0 = 0; b0 < C; b0 += 4 * kLanes) {
    switch (std::min<int64_t>(4, (C - b0 + kLanes - 1) / kLanes)) {
      case 4: column_block<6, 4>(x, y, runs, C, b0, acc); break;
      case 3: column_block<8, 3>(x, y, runs, C, b0, acc); break;
      case 2: column_block<12, 2>(x, y, runs, C, b0, acc); break;
      default: column_block<16, 1>(x, y, runs, C, b0, acc); break;
    }
  }
}

// In-register transpose of a 16 x 16 tile: on return r[j] holds column j of
// the rows given. Four shuffle stages (pairs of rows, pairs of pairs, then
// 128-bit lanes twice).
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // u[4k + m], 128-bit lane L: rows 4k..4k+3 of column 4L + m.
  __m512 u[16];
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * k + 1]), d = _mm512_castps_pd(t[4 * k + 3]);
    u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  // v[8k + m]: columns m and 8 + m of rows 8k..8k+7; v[8k + 4 + m]: columns 4 + m, 12 + m.
  __m512 v[16];
  for (int k = 0; k < 2; ++k)
    for (int m = 0; m < 4; ++m) {
      v[8 * k + m] = _mm512_shuffle_f32x4(u[8 * k + m], u[8 * k + 4 + m], _MM_SHUFFLE(2, 0, 2, 0));
      v[8 * k + 4 + m] = _mm512_shuffle_f32x4(u[8 * k + m], u[8 * k + 4 + m], _MM_SHUFFLE(3, 1, 3, 1));
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(v[j], v[8 + j], _MM_SHUFFLE(2, 0, 2, 0));
    r[8 + j] = _mm512_shuffle_f32x4(v[j], v[8 + j], _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// Bits of the first n (0..16) lanes.
inline __mmask16 first_lanes(int64_t n) {
  return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

__attribute__((target("avx512f"))) void transpose_tiles(const float* src, int64_t channel_stride, int64_t count,
                                                       int64_t C, float* dst) {
  for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
    const int64_t nc = std::min<int64_t>(kLanes, C - c0);
    const __mmask16 store_mask = first_lanes(nc);
    for (int64_t k0 = 0; k0 < count; k0 += kLanes) {
      const int64_t nk = std::min<int64_t>(kLanes, count - k0);
      const __mmask16 load_mask = first_lanes(nk);
      __m512 r[16];
      for (int64_t c = 0; c < kLanes; ++c)
        r[c] = c < nc ? _mm512_maskz_loadu_ps(load_mask, src + (c0 + c) * channel_stride + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t k = 0; k < nk; ++k) _mm512_mask_storeu_ps(dst + (k0 + k) * C + c0, store_mask, r[k]);
    }
  }
}

}  // namespace

void accumulate_float32(const float* x, const float* y, Runs runs, int64_t C, double* acc) {
  // Positions per block: the block's rows of x and y (2 * 4 * C * block
  // bytes) stay in L1/L2 while every pass re-reads them; at most 512 float32
  // terms are summed before the double accumulator takes over.
  const int64_t block = std::clamp<int64_t>(8192 / C, 64, 512);
  if (runs.len >= block) {  // long runs: blocks of one run each
    for (int64_t run = 0; run < runs.count; ++run)
      for (int64_t q0 = 0; q0 < runs.len; q0 += block) {
        const int64_t offset = (run * runs.stride + q0) * C;
        all_passes(x + offset, y + offset, Runs{1, std::min(block, runs.len - q0), 0}, C, acc);
      }
    return;
  }
  const int64_t per_block = block / std::max<int64_t>(runs.len, 1);  // short runs: whole runs per block
  for (int64_t run = 0; run < runs.count; run += per_block) {
    const int64_t offset = run * runs.stride * C;
    all_passes(x + offset, y + offset, Runs{std::min(per_block, runs.count - run), runs.len, runs.stride}, C, acc);
  }
}

void to_channels_last(const float* src, int64_t channel_stride, int64_t count, int64_t C, int64_t slot,
                      float* dst) {
  transpose_tiles(src, channel_stride, count, C, dst);
  std::fill(dst + count * C, dst + slot * C, 0.0f);
}

#else  // not x86-64 with GCC/Clang: no vector kernel, callers use a GEMM

// Callers check available() first.
void accumulate_float32(const float*, const float*, Runs, int64_t, double*) { std::abort(); }
void to_channels_last(const float*, int64_t, int64_t, int64_t, int64_t, float*) { std::abort(); }

#endif

}  // namespace kfac_ext::shifted_gram
