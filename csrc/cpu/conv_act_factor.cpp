// CPU kernel of kfac_ext::conv2d_act_factor: the Conv2d K-FAC activation
// factor of DESIGN.md section 2. With U the raw im2col patch matrix (rows
// N*T, columns (c, i, j) in F.unfold order, plus a ones column when has_bias),
// A = U^T U / (N * T^3): every entry of U divided by T, then / (N*T).
//
// U is never built. Entry ((c,i,j), (c',i',j')) of U^T U is a correlation of
// the input with itself shifted by the tap difference, summed over the output
// positions both taps use. Per axis (see conv_act_factor.h) the stride is
// split into phases, so every tap pair is a stride-1 shift between two phase
// sub-images; pairs with the same shifts share one C x C product over the
// whole sub-image (one flat offset into a zero-gapped channels-last copy of
// the input, no gather). The products run in the AVX-512 kernel of
// shifted_gram.h for float32 (BLAS spends as long packing these skinny
// operands as multiplying them), as GEMMs otherwise. A product is split at
// the rows where some tap's window starts or ends, so a pair sums the row
// segments inside its window; the few columns outside its window are
// subtracted as thin bands (from a column-outer copy of the edge columns
// only) with their corners added back. 3x3 stride 1 needs
// 13 C x C GEMMs of K ~ N*H*W instead of one (9C) x (9C) GEMM of K = N*T
// (about 6x fewer FLOPs, exact); stride 2 about 2.3x fewer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "../checks.h"
#include "conv_act_factor.h"
#include "shifted_gram.h"

namespace kfac_ext {
namespace {

using conv_plan::AxisCombo;
using conv_plan::AxisPlan;
using conv_plan::FlatLayout;

// Copies x (N, C, H, W), contiguous, into the zero-gapped channels-last
// layouts: `by_rows` (outer axis = rows) always, `by_cols` (outer axis =
// columns) when defined. Position p of a layout holds its C channels at
// [p*C, p*C + C). Both come zeroed: the gaps must read as zeros. Images are
// independent (disjoint positions), so threads take whole images.
template <typename scalar_t>
void fill_layouts(const at::Tensor& x, const AxisPlan& rows, const AxisPlan& cols,
                  const FlatLayout& row_layout, at::Tensor& by_rows, const FlatLayout& col_layout,
                  at::Tensor& by_cols) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const scalar_t* src = x.data_ptr<scalar_t>();
  scalar_t* dst_r = by_rows.data_ptr<scalar_t>();
  scalar_t* dst_c = by_cols.defined() ? by_cols.data_ptr<scalar_t>() : nullptr;
  const int64_t sh = rows.stride, sw = cols.stride;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* img = src + (n * C + c) * H * W;
        for (int64_t u = 0; u < H; ++u) {
          const int64_t pr = u % sh, m = u / sh;
          const scalar_t* line = img + u * W;
          // Column phase pc holds v = pc, pc + sw, ...: consecutive positions
          // of the row-major copy.
          for (int64_t pc = 0; pc < sw && pc < W; ++pc) {
            scalar_t* dst = dst_r + row_layout.index(pr, pc, m, n, 0) * C + c;
            for (int64_t v = pc, k = 0; v < W; v += sw, ++k) dst[k * C] = line[v];
            if (dst_c) {
              for (int64_t v = pc, k = 0; v < W; v += sw, ++k)
                if (col_layout.outer_keep.pos[k] >= 0) dst_c[col_layout.index(pc, pr, k, n, m) * C + c] = line[v];
            }
          }
        }
      }
    }
  });
}

// X[start : start+len]^T X[start+shift : start+shift+len] (C x C) of a
// channels-last layout X (positions x C), on views: the vectorised kernel
// when `vectorised` (float32 only), else a GEMM.
at::Tensor shifted_product(const at::Tensor& flat, int64_t start, int64_t len, int64_t shift, bool vectorised) {
  TORCH_INTERNAL_ASSERT(start >= 0 && start + shift >= 0 && start + len <= flat.size(0) &&
                        start + shift + len <= flat.size(0));
  if (!vectorised) return at::mm(flat.narrow(0, start, len).t(), flat.narrow(0, start + shift, len));
  const int64_t C = flat.size(1);
  at::Tensor out = at::empty({C, C}, flat.options());
  const float* base = flat.const_data_ptr<float>();
  shifted_gram::float32(base + start * C, base + (start + shift) * C, len, C, out.mutable_data_ptr<float>());
  return out;
}

// The C x C block of taps (p, p') in the tap-major Gram matrix.
at::Tensor tap_block(at::Tensor& gram, int64_t p, int64_t pp, int64_t C) {
  return gram.narrow(0, p * C, C).narrow(1, pp * C, C);
}

// gram[p*C + a, pp*C + b] = sum of sign * term[a, b] over `terms` (C x C,
// contiguous), and its mirror gram[pp*C + b, p*C + a]; for p == pp the
// symmetric part (one GEMM need not be bitwise symmetric). One pass, tiled
// so that the transposed writes of the mirror stay in cache.
template <typename scalar_t>
void write_block(at::Tensor& gram, int64_t p, int64_t pp, int64_t C,
                 const std::vector<std::pair<const at::Tensor*, int>>& terms) {
  constexpr int64_t kTile = 32;
  scalar_t* g = gram.data_ptr<scalar_t>();
  const int64_t ld = gram.size(1);
  std::vector<const scalar_t*> src;
  std::vector<scalar_t> sign;
  for (const auto& [term, sgn] : terms) {
    TORCH_INTERNAL_ASSERT(term->defined() && term->is_contiguous() && term->size(0) == C);
    src.push_back(term->template const_data_ptr<scalar_t>());
    sign.push_back(static_cast<scalar_t>(sgn));
  }
  // Sum of the terms at (a, b0 .. b0+len) into acc.
  auto sum_run = [&](int64_t a, int64_t b0, int64_t len, scalar_t* __restrict acc) {
    std::fill(acc, acc + len, scalar_t(0));
    for (size_t k = 0; k < src.size(); ++k) {
      const scalar_t* __restrict run = src[k] + a * C + b0;
      const scalar_t sgn = sign[k];
      for (int64_t b = 0; b < len; ++b) acc[b] += sgn * run[b];
    }
  };
  const int64_t tiles = (C + kTile - 1) / kTile;
  at::parallel_for(0, tiles * tiles, 1, [&](int64_t t0, int64_t t1) {
    scalar_t acc[kTile], acc_t[kTile][kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a0 = (t / tiles) * kTile, b0 = (t % tiles) * kTile;
      const int64_t na = std::min(kTile, C - a0), nb = std::min(kTile, C - b0);
      if (p == pp)  // the transposed tile, for the symmetric part
        for (int64_t b = 0; b < nb; ++b) sum_run(b0 + b, a0, na, acc_t[b]);
      for (int64_t a = 0; a < na; ++a) {
        sum_run(a0 + a, b0, nb, acc);
        scalar_t* dst = g + (p * C + a0 + a) * ld + pp * C + b0;
        if (p == pp) {
          for (int64_t b = 0; b < nb; ++b) dst[b] = (acc[b] + acc_t[b][a]) * scalar_t(0.5);
        } else {
          for (int64_t b = 0; b < nb; ++b) dst[b] = acc_t[b][a] = acc[b];
        }
      }
      // The mirror tile, written row by row (whole cache lines) from acc_t.
      if (p != pp)
        for (int64_t b = 0; b < nb; ++b)
          std::copy(acc_t[b], acc_t[b] + na, g + (pp * C + b0 + b) * ld + p * C + a0);
    }
  });
}

// The (c, c') block sums of U^T U for every tap pair served by one
// (row combo, column combo), written into the tap-major gram[p*C + c,
// p'*C + c'] and its mirror.
void accumulate_combo(const at::Tensor& by_rows, const FlatLayout& lr, const at::Tensor& by_cols,
                      const FlatLayout& lc, const AxisCombo& rc, const AxisCombo& cc, bool self_transposed,
                      int64_t kw, bool vectorised, at::Tensor& gram) {
  const int64_t C = by_rows.size(1);
  // Flat offsets of the partner sub-image, in both layouts.
  const int64_t shift_r = lr.base(rc.partner_phase, cc.partner_phase) - lr.base(rc.phase, cc.phase) +
                          rc.delta * lr.row + cc.delta;
  const int64_t shift_c = lc.base(cc.partner_phase, rc.partner_phase) - lc.base(cc.phase, rc.phase) +
                          cc.delta * lc.row + rc.delta;
  auto row_start = [&](int64_t m) { return lr.base(rc.phase, cc.phase) + m * lr.row; };
  auto col_start = [&](int64_t k) { return lc.base(cc.phase, rc.phase) + lc.outer_keep.pos[k] * lc.row; };

  // One product per row segment, every column (out-of-range columns meet
  // zeros); the segments partition the valid rows, so a tap's row window is
  // a sum of whole segments and no row is multiplied twice.
  std::vector<at::Tensor> row_band(rc.segments.size()), col_band(cc.segments.size());
  for (size_t s = 0; s < rc.segments.size(); ++s) {
    const auto [m0, m1] = rc.segments[s];
    row_band[s] = shifted_product(by_rows, row_start(m0), (m1 - m0) * lr.row, shift_r, vectorised);
  }
  for (size_t s = 0; s < cc.segments.size(); ++s) {
    if (!cc.needed[s]) continue;
    const auto [k0, k1] = cc.segments[s];
    col_band[s] = shifted_product(by_cols, col_start(k0), (k1 - k0) * lc.row, shift_c, vectorised);
  }
  // Corners (excluded rows x excluded columns) were subtracted twice.
  std::vector<std::vector<at::Tensor>> corner(rc.segments.size(),
                                              std::vector<at::Tensor>(cc.segments.size()));
  for (size_t rs = 0; rs < rc.segments.size(); ++rs) {
    if (!rc.needed[rs]) continue;
    const auto [m0, m1] = rc.segments[rs];
    for (size_t cs = 0; cs < cc.segments.size(); ++cs) {
      if (!cc.needed[cs]) continue;
      const auto [k0, k1] = cc.segments[cs];
      auto patch = [&](int64_t start) {
        return by_rows.narrow(0, start, (m1 - m0) * lr.row)
            .view({m1 - m0, lr.batch, lr.slot, C})
            .narrow(2, k0, k1 - k0)
            .reshape({-1, C});
      };
      corner[rs][cs] = at::mm(patch(row_start(m0)).t(), patch(row_start(m0) + shift_r));
    }
  }

  for (size_t t = 0; t < rc.taps.size(); ++t) {
    for (size_t u = 0; u < cc.taps.size(); ++u) {
      const int64_t p = rc.taps[t] * kw + cc.taps[u];
      const int64_t pp = rc.partner_taps[t] * kw + cc.partner_taps[u];
      // A self-transposed combo serves (p, p') and (p', p): do one, mirror it.
      if (self_transposed && p > pp) continue;
      // Block = the row segments inside tap t's window, minus the column
      // bands outside tap u's window restricted to those rows (= whole band
      // minus its corners with the excluded row segments).
      std::vector<std::pair<const at::Tensor*, int>> terms;
      for (size_t rs = 0; rs < rc.segments.size(); ++rs)
        if (!rc.excluded[t][rs]) terms.emplace_back(&row_band[rs], 1);
      for (size_t cs = 0; cs < cc.segments.size(); ++cs) {
        if (!cc.excluded[u][cs]) continue;
        terms.emplace_back(&col_band[cs], -1);
        for (size_t rs = 0; rs < rc.segments.size(); ++rs)
          if (rc.excluded[t][rs]) terms.emplace_back(&corner[rs][cs], 1);
      }
      AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "conv2d_act_factor_block",
                                 [&] { write_block<scalar_t>(gram, p, pp, C, terms); });
    }
  }
}

// U^T U (unscaled) without the bias row/column, in the accumulation dtype and
// in tap-major order (p*C + c, p = i*kw + j) so that every block is a plain
// 2-D view with contiguous rows.
at::Tensor patch_gram(const at::Tensor& x, const AxisPlan& rows, const AxisPlan& cols, bool vectorised) {
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t kh = rows.kernel, kw = cols.kernel;
  const FlatLayout lr(N, rows, cols, conv_plan::keep_all(rows));
  const FlatLayout lc(N, cols, rows, conv_plan::keep_band_neighbourhoods(cols));
  const bool need_cols = lc.outer_len > 0;
  at::Tensor by_rows = at::zeros({lr.total, C}, x.options());
  at::Tensor by_cols = need_cols ? at::zeros({lc.total, C}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_fill",
                             [&] { fill_layouts<scalar_t>(x, rows, cols, lr, by_rows, lc, by_cols); });

  at::Tensor gram = at::empty({kh * kw * C, kh * kw * C}, x.options());
  // One task per (row combo, column combo) up to transposition; tasks write
  // disjoint blocks. Threads take whole tasks (each GEMM single-threaded):
  // on a busy machine a few long tasks per thread lose far less to
  // stragglers than a 2-thread GEMM per call with a barrier each.
  std::vector<std::pair<size_t, size_t>> tasks;
  for (size_t r = 0; r < rows.combos.size(); ++r)
    for (size_t q = 0; q < cols.combos.size(); ++q) {
      // The transposed combo's blocks are the transposes of this one's.
      const auto mirror = std::make_pair(static_cast<size_t>(rows.combos[r].transposed),
                                         static_cast<size_t>(cols.combos[q].transposed));
      if (!(mirror < std::make_pair(r, q))) tasks.emplace_back(r, q);
    }
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const auto [r, q] = tasks[k];
      const auto& rc = rows.combos[r];
      const auto& cc = cols.combos[q];
      if (rc.lo == rc.hi || cc.lo == cc.hi) {  // windows only ever meet zeros
        for (size_t t = 0; t < rc.taps.size(); ++t)
          for (size_t u = 0; u < cc.taps.size(); ++u) {
            const int64_t p = rc.taps[t] * kw + cc.taps[u];
            const int64_t pp = rc.partner_taps[t] * kw + cc.partner_taps[u];
            tap_block(gram, p, pp, C).zero_();
            tap_block(gram, pp, p, C).zero_();
          }
        continue;
      }
      const bool self_transposed = rc.transposed == static_cast<int>(r) && cc.transposed == static_cast<int>(q);
      accumulate_combo(by_rows, lr, by_cols, lc, rc, cc, self_transposed, kw, vectorised, gram);
    }
  });
  return gram;
}

// out[c*KK + p, c'*KK + p'] = scale * gram[p*C + c, p'*C + c'] (KK = kh*kw):
// back to the (c, i, j) order of F.unfold. Each output row is written once,
// sequentially, from KK contiguous source runs.
template <typename scalar_t>
void untangle_taps(const at::Tensor& gram, at::Tensor& out, int64_t C, int64_t KK, double scale) {
  const scalar_t* src = gram.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  const int64_t D = C * KK, ld = out.stride(0);
  const scalar_t s = static_cast<scalar_t>(scale);
  at::parallel_for(0, D, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r / KK, p = r % KK;
      const scalar_t* src_row = src + (p * C + c) * D;
      scalar_t* dst_row = dst + r * ld;
      for (int64_t pp = 0; pp < KK; ++pp) {
        const scalar_t* run = src_row + pp * C;
        for (int64_t cc = 0; cc < C; ++cc) dst_row[cc * KK + pp] = s * run[cc];
      }
    }
  });
}

// Small problems: im2col + one GEMM. The shift algorithm issues a few dozen
// small GEMMs (about 0.5 ms of fixed cost for a 3x3 kernel), which measured
// break-even with the dense GEMM at about 2e7 FLOPs on 2 cores.
constexpr double kShiftMinFlops = 2e7;

// Small problems: the whole factor from one GEMM. U^T (rows (c, i, j) in
// F.unfold order, plus a ones row when has_bias; columns the N*T output
// positions) is gathered straight from the input into one buffer, so the bias
// column comes out of the same GEMM (U^T 1 = window sums, 1^T 1 = N*T) and the
// per-call fixed cost is three allocations, one GEMM and two plain loops
// instead of ~30 ATen ops (im2col, transpose copy, per-tap window sums,
// symmetrisation) -- which dominated on digits-sized layers.
template <typename scalar_t>
void fill_patches_t(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                    at::IntArrayRef dil, int64_t Ho, int64_t Wo, bool has_bias, at::Tensor& ut) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t kh = k[0], kw = k[1], T = Ho * Wo, NT = N * T;
  const scalar_t* src = x.data_ptr<scalar_t>();
  scalar_t* dst = ut.data_ptr<scalar_t>();
  const int64_t D = C * kh * kw;
  at::parallel_for(0, D, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r / (kh * kw), i = (r / kw) % kh, j = r % kw;
      scalar_t* row = dst + r * NT;
      // Output columns whose input column v = ow*s - p + j*d lies in [0, W).
      const int64_t off = j * dil[1] - pad[1], s1 = stride[1];
      const int64_t ow_lo = std::min(Wo, off >= 0 ? int64_t(0) : (-off + s1 - 1) / s1);
      const int64_t ow_hi = std::max(ow_lo, std::min(Wo, W - 1 - off >= 0 ? (W - 1 - off) / s1 + 1 : 0));
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* img = src + (n * C + c) * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const int64_t u = oh * stride[0] - pad[0] + i * dil[0];
          scalar_t* out = row + (n * Ho + oh) * Wo;
          if (u < 0 || u >= H) {
            std::fill(out, out + Wo, scalar_t(0));
            continue;
          }
          const scalar_t* line = img + u * W;
          std::fill(out, out + ow_lo, scalar_t(0));
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) out[ow] = line[ow * s1 + off];
          std::fill(out + ow_hi, out + Wo, scalar_t(0));
        }
      }
    }
  });
  if (has_bias) std::fill(dst + D * NT, dst + (D + 1) * NT, scalar_t(1));
}

// out = scale * (g + g^T) / 2: exactly symmetric (one GEMM need not be).
template <typename scalar_t>
void scale_symmetric(const at::Tensor& g, at::Tensor& out, double scale) {
  const int64_t n = g.size(0);
  const scalar_t* a = g.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t h = static_cast<scalar_t>(0.5 * scale);
  for (int64_t r = 0; r < n; ++r) {
    o[r * n + r] = static_cast<scalar_t>(scale) * a[r * n + r];
    for (int64_t c = r + 1; c < n; ++c) o[r * n + c] = o[c * n + r] = h * (a[r * n + c] + a[c * n + r]);
  }
}

at::Tensor factor_im2col(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t Ho, int64_t Wo,
                         bool has_bias, double scale) {
  const int64_t D = x.size(1) * kernel_size[0] * kernel_size[1] + (has_bias ? 1 : 0);
  at::Tensor ut = at::empty({D, x.size(0) * Ho * Wo}, x.options());
  at::Tensor out = at::empty({D, D}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_im2col", [&] {
    fill_patches_t<scalar_t>(x, kernel_size, stride, padding, dilation, Ho, Wo, has_bias, ut);
    const at::Tensor g = at::mm(ut, ut.t());
    scale_symmetric<scalar_t>(g, out, scale);
  });
  return out;
}

enum class Algorithm { kIm2col, kShiftBlas, kShiftVectorised };

// KFAC_EXT_CONV_FACTOR_ALGO=im2col|shift|shift-blas forces an algorithm
// ('shift' with the vectorised products where they apply, 'shift-blas' with
// GEMMs; tests cover all three on small shapes); unset, the problem size
// decides. The vectorised products need float32 and AVX-512.
Algorithm choose_algorithm(double dense_flops, at::ScalarType acc_type) {
  const bool vectorisable = acc_type == at::kFloat && shifted_gram::available();
  const Algorithm shift = vectorisable ? Algorithm::kShiftVectorised : Algorithm::kShiftBlas;
  const char* forced = std::getenv("KFAC_EXT_CONV_FACTOR_ALGO");
  const std::string name = forced == nullptr ? "" : forced;
  if (name == "shift") return shift;
  if (name == "shift-blas") return Algorithm::kShiftBlas;
  if (name == "im2col") return Algorithm::kIm2col;
  TORCH_CHECK(name.empty(), "conv2d_act_factor: KFAC_EXT_CONV_FACTOR_ALGO must be 'shift', 'shift-blas' or "
              "'im2col', got '", name, "'");
  return dense_flops >= kShiftMinFlops ? shift : Algorithm::kIm2col;
}

at::Tensor conv2d_act_factor_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, bool has_bias) {
  const auto [Ho, Wo] = check_conv2d_act_factor_args(input, kernel_size, stride, padding, dilation);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t T = Ho * Wo;
  const int64_t D = C * kernel_size[0] * kernel_size[1];
  const int64_t Dout = D + (has_bias ? 1 : 0);

  // Accumulate like a GEMM of the input dtype would: double for double,
  // float otherwise (half / bfloat16 inputs are widened).
  const auto acc_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = input.to(acc_type).contiguous();
  const double scale = 1.0 / (static_cast<double>(N) * T * T * T);
  const Algorithm algorithm = choose_algorithm(2.0 * N * T * D * D, acc_type);
  if (algorithm == Algorithm::kIm2col)
    return factor_im2col(x, kernel_size, stride, padding, dilation, Ho, Wo, has_bias, scale)
        .to(input.scalar_type());
  const AxisPlan rows = conv_plan::make_axis_plan(H, kernel_size[0], stride[0], padding[0], dilation[0], Ho);
  const AxisPlan cols = conv_plan::make_axis_plan(W, kernel_size[1], stride[1], padding[1], dilation[1], Wo);
  at::Tensor out = at::empty({Dout, Dout}, x.options());
  const at::Tensor gram = patch_gram(x, rows, cols, algorithm == Algorithm::kShiftVectorised);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_untangle", [&] {
    untangle_taps<scalar_t>(gram, out, C, kernel_size[0] * kernel_size[1], scale);
  });

  if (has_bias) {
    // Ones column: U^T 1 sums the input over each tap's window; 1^T 1 = N*T.
    // One pass over the batch-summed input (a loop, not 2 slices + a sum per tap).
    const at::Tensor xs = x.sum(0);  // (C, H, W), contiguous
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_bias", [&] {
      const scalar_t* img = xs.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      const int64_t kh = kernel_size[0], kw = kernel_size[1];
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) {
            double acc = 0;
            for (int64_t oh = 0; oh < Ho; ++oh) {
              const int64_t u = oh * stride[0] - padding[0] + i * dilation[0];
              if (u < 0 || u >= H) continue;
              for (int64_t ow = 0; ow < Wo; ++ow) {
                const int64_t v = ow * stride[1] - padding[1] + j * dilation[1];
                if (v >= 0 && v < W) acc += img[(c * H + u) * W + v];
              }
            }
            o[((c * kh + i) * kw + j) * Dout + D] = static_cast<scalar_t>(acc * scale);
          }
    });
    out.narrow(0, D, 1).narrow(1, 0, D).copy_(out.narrow(1, D, 1).narrow(0, 0, D).t());
    out.select(0, D).select(0, D).fill_(static_cast<double>(N * T) * scale);
  }
  return out.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("conv2d_act_factor", &conv2d_act_factor_cpu); }

}  // namespace kfac_ext
