// CPU kernel of kfac_ext::conv2d_act_factor: the Conv2d K-FAC activation
// factor of docs/design.md §2. With U the raw im2col patch matrix (rows
// N*T, columns (c, i, j) in F.unfold order, plus a ones column when has_bias),
// A = U^T U / (N * T^3): every entry of U divided by T, then / (N*T).
//
// U is never built. Entry ((c,i,j), (c',i',j')) of U^T U is a correlation of
// the input with itself shifted by the tap difference, summed over the output
// positions both taps use. Per axis (see conv2d_act_factor.h) the stride is
// split into phases, so every tap pair is a stride-1 shift between two phase
// sub-images; pairs with the same shifts share one C x C product over the
// whole sub-image (one flat offset into a zero-gapped channels-last copy of
// the input, no gather). A product is split at the rows where some tap's
// window starts or ends, so a pair sums the row segments inside its window;
// the few columns outside its window are subtracted as thin bands with their
// corners added back. 3x3 stride 1 needs 13 C x C products of K ~ N*H*W
// instead of one (9C) x (9C) GEMM of K = N*T (about 6x fewer FLOPs, exact);
// stride 2 about 2.3x fewer.
//
// float32 on AVX-512: the products run in the kernel of shifted_gram.h (BLAS
// spends as long packing these skinny operands as multiplying them), over
// only the positions of each image row that pair two possibly non-zero
// values, in chunks the threads share; the bands are strided runs of the same
// copy. Otherwise the products are GEMMs over whole ranges and the bands come
// from a second, column-outer copy of the edge columns.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../checks.h"
#include "conv2d_act_factor.h"
#include "shifted_gram.h"

namespace kfac_ext {
namespace {

using conv_plan::AxisCombo;
using conv_plan::AxisPlan;
using conv_plan::FlatLayout;

// Copies x (N, C, H, W), contiguous, into the zero-gapped channels-last
// layout `by_rows` (outer axis = rows), which comes zeroed (the gaps must
// read as zeros). Position p holds its C channels at [p*C, p*C + C). Images
// are independent (disjoint positions), so threads take whole images. Any
// dtype and stride; fill_rows_vectorised is the float32, column-stride-1 path.
template <typename scalar_t>
void fill_rows_scalar(const at::Tensor& x, const AxisPlan& rows, const AxisPlan& cols, const FlatLayout& lr,
                      const at::Tensor& by_rows) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst_r = by_rows.mutable_data_ptr<scalar_t>();
  const int64_t sh = rows.stride, sw = cols.stride;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* img = src + (n * C + c) * H * W;
        for (int64_t u = 0; u < H; ++u) {
          const scalar_t* line = img + u * W;
          // Column phase pc holds v = pc, pc + sw, ...: consecutive positions.
          for (int64_t pc = 0; pc < sw && pc < W; ++pc) {
            scalar_t* dst = dst_r + lr.index(u % sh, pc, u / sh, n, 0) * C + c;
            for (int64_t v = pc, k = 0; v < W; v += sw, ++k) dst[k * C] = line[v];
          }
        }
      }
  });
}

// The column-outer layout `by_cols` (zeroed; only the kept columns) from the
// filled `by_rows`: the same positions in another order, each a contiguous
// run of C values in both, so a copy of whole runs.
template <typename scalar_t>
void fill_cols_from_rows(const AxisPlan& rows, const AxisPlan& cols, const FlatLayout& lr, const at::Tensor& by_rows,
                         const FlatLayout& lc, const at::Tensor& by_cols, int64_t N) {
  const int64_t C = by_rows.size(1);
  const scalar_t* src = by_rows.const_data_ptr<scalar_t>();
  scalar_t* dst = by_cols.mutable_data_ptr<scalar_t>();
  const int64_t sh = rows.stride, sw = cols.stride;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t v = 0; v < cols.size; ++v) {
        const int64_t pc = v % sw, k = v / sw;
        if (lc.outer_keep.pos[k] < 0) continue;
        for (int64_t u = 0; u < rows.size; ++u) {
          const int64_t pr = u % sh, m = u / sh;
          std::copy_n(src + lr.index(pr, pc, m, n, k) * C, C, dst + lc.index(pc, pr, k, n, m) * C);
        }
      }
  });
}

// The two layouts of one call (uninitialised), as views of a buffer this
// thread keeps between calls. A fresh buffer of a ResNet-20 layer1 layout
// (10 MB) is mmapped and page-faulted on every call (glibc maps allocations
// at or above its mmap threshold, which freeing a chunk only raises to that
// chunk's size): 2.5 ms to zero a new one against 0.12 ms for a resident
// one, in a ~10 ms op. The kept buffer grows to the largest layout seen, up
// to kKeptLayoutBytes (ResNet-20 at batch 128 needs ~13 MB), and is freed
// with the thread; a larger layout is allocated for its call only, where the
// page faults weigh less next to the products.
constexpr int64_t kKeptLayoutBytes = int64_t{64} << 20;

std::pair<at::Tensor, at::Tensor> layout_buffers(int64_t rows_len, int64_t cols_len, int64_t C,
                                                 const at::TensorOptions& options) {
  thread_local at::Tensor kept;
  const int64_t need = (rows_len + cols_len) * C;
  at::Tensor buffer;
  if (kept.defined() && kept.numel() >= need && kept.dtype() == options.dtype()) {
    buffer = kept;
  } else {
    buffer = at::empty({need}, options);
    if (need * buffer.element_size() <= kKeptLayoutBytes) kept = buffer;
  }
  at::Tensor by_rows = buffer.narrow(0, 0, rows_len * C).view({rows_len, C});
  at::Tensor by_cols = cols_len > 0 ? buffer.narrow(0, rows_len * C, cols_len * C).view({cols_len, C}) : at::Tensor();
  return {by_rows, by_cols};
}

// by_rows from a float32 x whose column stride is 1, so that every input row
// is one contiguous run of a slot: per image and row, 16 x 16 tiles
// transposed in registers, the slot's gap written as zeros in the same pass;
// the rows no slot covers (the lead, each phase block's gap rows, rows a
// shorter phase lacks, the tail) are zeroed here too, so nothing is written
// twice.
void fill_rows_vectorised(const at::Tensor& x, const AxisPlan& rows, const FlatLayout& lr, at::Tensor& by_rows) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_INTERNAL_ASSERT(lr.inner_phases == 1 && lr.inner_sub == W);
  const float* src = x.const_data_ptr<float>();
  float* dst = by_rows.mutable_data_ptr<float>();
  std::vector<std::pair<int64_t, int64_t>> empty_rows = {{0, lr.lead}};
  for (int64_t b = 0; b < rows.stride; ++b) {
    const int64_t first = lr.base(b, 0);
    empty_rows.emplace_back(first - lr.outer_gap * lr.row, first);
    empty_rows.emplace_back(first + rows.phase_len(b) * lr.row, first + lr.outer_len * lr.row);
  }
  empty_rows.emplace_back(lr.base(rows.stride - 1, 0) + lr.outer_len * lr.row, lr.total);
  at::parallel_for(0, static_cast<int64_t>(empty_rows.size()), 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::fill(dst + empty_rows[r].first * C, dst + empty_rows[r].second * C, 0.0f);
  });
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t u = 0; u < H; ++u)
        shifted_gram::to_channels_last(src + n * C * H * W + u * W, H * W, W, C, lr.slot,
                                       dst + lr.index(u % rows.stride, 0, u / rows.stride, n, 0) * C);
  });
}

// X[start : start+len]^T X[start+shift : start+shift+len] (C x C) of one
// channels-last layout X (positions x C), restricted to positions
// [live_begin, live_end) of every slot (the range is whole slots: one image
// row or column each, `slot` positions apart). For a full product the live
// positions are those that pair two values that can be non-zero -- the rest
// pair a gap or a missing phase entry, a quarter of the positions at 8x8
// maps -- and GEMMs, which take the whole range, get the same sum; for a
// column band taken from the row layout they are the band's columns, which
// only the vectorised products (runs) can restrict to.
struct ProductSpec {
  const at::Tensor* layout;
  int64_t start, len, shift;
  int64_t slot, live_begin, live_end;
};

// Live positions per work item of the vectorised products: ~8 MFLOP at C = 64,
// small enough that two threads taking items from a shared counter finish
// together even when one of them is slowed by another process, large enough
// that the counter and the double flushes cost nothing.
int64_t positions_per_item(int64_t C) { return std::max<int64_t>(1024, 65536 / C); }

// Every product of `specs`, as C x C tensors. Vectorised: the products are cut
// into chunks of slots (their live runs) and the threads take chunks from one counter, each
// adding into its own double accumulators (summed at the end), so the work is
// balanced however unequal the products are; chunks go in layout order, so the
// threads sweep the layout together and each region is reused from cache by
// all the products that read it. Otherwise: one GEMM per product, threads
// take whole products.
std::vector<at::Tensor> compute_products(const std::vector<ProductSpec>& specs, int64_t C, bool vectorised,
                                         const at::TensorOptions& options) {
  const int64_t P = static_cast<int64_t>(specs.size());
  for (const auto& sp : specs)  // both operand ranges inside the layout, whole slots
    TORCH_INTERNAL_ASSERT(sp.start >= 0 && sp.start + sp.shift >= 0 && sp.start + sp.len <= sp.layout->size(0) &&
                          sp.start + sp.shift + sp.len <= sp.layout->size(0) && sp.len % sp.slot == 0 &&
                          0 <= sp.live_begin && sp.live_end <= sp.slot);
  std::vector<at::Tensor> out(specs.size());
  if (!vectorised) {
    at::parallel_for(0, P, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const auto& sp = specs[k];
        out[k] = at::mm(sp.layout->narrow(0, sp.start, sp.len).t(),
                        sp.layout->narrow(0, sp.start + sp.shift, sp.len));
      }
    });
    return out;
  }
  struct Item {
    int64_t product;
    shifted_gram::Runs runs;
    const float* x;
  };
  std::vector<Item> items;
  for (int64_t k = 0; k < P; ++k) {
    const auto& sp = specs[k];
    const int64_t live = sp.live_end - sp.live_begin;
    if (live <= 0) continue;  // every pair meets a zero: the product stays 0
    const int64_t slots_in_product = sp.len / sp.slot;
    const int64_t per_item = std::max<int64_t>(1, positions_per_item(C) / live);
    const float* base = sp.layout->const_data_ptr<float>() + (sp.start + sp.live_begin) * C;
    for (int64_t r = 0; r < slots_in_product; r += per_item)
      items.push_back({k, {std::min(per_item, slots_in_product - r), live, sp.slot}, base + r * sp.slot * C});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.x < b.x; });

  const int64_t sets = std::max<int64_t>(1, at::get_num_threads());  // of accumulators, one per thread
  const int64_t CC = C * C;
  std::vector<double> acc(static_cast<size_t>(sets * P * CC), 0.0);
  std::atomic<size_t> next{0};
  // One range element per thread; a serial fallback (e.g. nested inside
  // another parallel region) gets the whole range once and does every item.
  at::parallel_for(0, sets, 1, [&](int64_t set, int64_t) {
    double* mine = acc.data() + set * P * CC;
    for (size_t i = next++; i < items.size(); i = next++) {
      const Item& it = items[i];
      shifted_gram::accumulate_float32(it.x, it.x + specs[it.product].shift * C, it.runs, C, mine + it.product * CC);
    }
  });
  for (int64_t k = 0; k < P; ++k) out[k] = at::empty({C, C}, options);
  at::parallel_for(0, P, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      float* dst = out[k].mutable_data_ptr<float>();
      for (int64_t e = 0; e < CC; ++e) {
        double sum = 0.0;
        for (int64_t set = 0; set < sets; ++set) sum += acc[(set * P + k) * CC + e];
        dst[e] = static_cast<float>(sum);
      }
    }
  });
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

// The shifted products one (row combo, column combo) task needs: one per row
// segment over every column (out-of-range columns meet zeros; the segments
// partition the valid rows, so a tap's row window is a sum of whole segments
// and no row is multiplied twice), and one per column band some tap's window
// leaves out, from the column-outer copy.
struct ComboGeometry {
  const AxisPlan& rows;
  const AxisPlan& cols;
  const FlatLayout& lr;
  const FlatLayout& lc;
  const AxisCombo& rc;
  const AxisCombo& cc;
  // Flat offsets of the partner sub-image, in both layouts.
  int64_t shift_r() const {
    return lr.base(rc.partner_phase, cc.partner_phase) - lr.base(rc.phase, cc.phase) + rc.delta * lr.row + cc.delta;
  }
  int64_t shift_c() const {
    return lc.base(cc.partner_phase, rc.partner_phase) - lc.base(cc.phase, rc.phase) + cc.delta * lc.row + rc.delta;
  }
  int64_t row_start(int64_t m) const { return lr.base(rc.phase, cc.phase) + m * lr.row; }
  // Inner positions k of a slot whose partner k + delta is a real entry too.
  static std::pair<int64_t, int64_t> live(const AxisPlan& inner, const AxisCombo& combo) {
    const int64_t begin = std::max<int64_t>(0, -combo.delta);
    const int64_t end = std::min(inner.phase_len(combo.phase), inner.phase_len(combo.partner_phase) - combo.delta);
    return {begin, std::max(begin, end)};
  }
  int64_t col_start(int64_t k) const { return lc.base(cc.phase, rc.phase) + lc.outer_keep.pos[k] * lc.row; }
};

struct TaskProducts {
  std::vector<int64_t> row_band, col_band;  // indices into the product list; -1: not needed
};

// by_cols undefined: the column bands come from by_rows as strided runs (the
// vectorised products take runs; GEMMs need the contiguous column-outer copy).
TaskProducts plan_products(const ComboGeometry& geo, const at::Tensor& by_rows, const at::Tensor& by_cols,
                           std::vector<ProductSpec>& specs) {
  TaskProducts task;
  const auto [row_live0, row_live1] = ComboGeometry::live(geo.cols, geo.cc);
  for (const auto& [m0, m1] : geo.rc.segments) {
    task.row_band.push_back(static_cast<int64_t>(specs.size()));
    specs.push_back({&by_rows, geo.row_start(m0), (m1 - m0) * geo.lr.row, geo.shift_r(), geo.lr.slot, row_live0,
                     row_live1});
  }
  const auto [col_live0, col_live1] = ComboGeometry::live(geo.rows, geo.rc);
  for (size_t s = 0; s < geo.cc.segments.size(); ++s) {
    if (!geo.cc.needed[s]) {
      task.col_band.push_back(-1);
      continue;
    }
    const auto [k0, k1] = geo.cc.segments[s];
    task.col_band.push_back(static_cast<int64_t>(specs.size()));
    if (by_cols.defined()) {
      specs.push_back({&by_cols, geo.col_start(k0), (k1 - k0) * geo.lc.row, geo.shift_c(), geo.lc.slot, col_live0,
                       col_live1});
    } else {  // runs of the band's columns, one per slot of the valid rows, straight from by_rows
      specs.push_back({&by_rows, geo.row_start(geo.rc.lo), (geo.rc.hi - geo.rc.lo) * geo.lr.row, geo.shift_r(),
                       geo.lr.slot, k0, k1});
    }
  }
  return task;
}

// The (c, c') block sums of U^T U for every tap pair served by one task,
// from its products, written into the tap-major gram[p*C + c, p'*C + c'] and
// its mirror.
void finish_combo(const ComboGeometry& geo, const at::Tensor& by_rows, const TaskProducts& task,
                  const std::vector<at::Tensor>& products, bool self_transposed, int64_t kw, at::Tensor& gram) {
  const AxisCombo& rc = geo.rc;
  const AxisCombo& cc = geo.cc;
  const int64_t C = by_rows.size(1);
  // Corners (excluded rows x excluded columns) were subtracted twice.
  std::vector<std::vector<at::Tensor>> corner(rc.segments.size(), std::vector<at::Tensor>(cc.segments.size()));
  for (size_t rs = 0; rs < rc.segments.size(); ++rs) {
    if (!rc.needed[rs]) continue;
    const auto [m0, m1] = rc.segments[rs];
    for (size_t cs = 0; cs < cc.segments.size(); ++cs) {
      if (!cc.needed[cs]) continue;
      const auto [k0, k1] = cc.segments[cs];
      auto patch = [&](int64_t start) {
        return by_rows.narrow(0, start, (m1 - m0) * geo.lr.row)
            .view({m1 - m0, geo.lr.batch, geo.lr.slot, C})
            .narrow(2, k0, k1 - k0)
            .reshape({-1, C});
      };
      corner[rs][cs] = at::mm(patch(geo.row_start(m0)).t(), patch(geo.row_start(m0) + geo.shift_r()));
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
        if (!rc.excluded[t][rs]) terms.emplace_back(&products[task.row_band[rs]], 1);
      for (size_t cs = 0; cs < cc.segments.size(); ++cs) {
        if (!cc.excluded[u][cs]) continue;
        terms.emplace_back(&products[task.col_band[cs]], -1);
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
  const bool need_cols = !vectorised && lc.outer_len > 0;
  at::Tensor by_rows, by_cols;
  std::tie(by_rows, by_cols) = layout_buffers(lr.total, need_cols ? lc.total : 0, C, x.options());
  if (vectorised && cols.stride == 1) {
    fill_rows_vectorised(x, rows, lr, by_rows);
  } else {
    by_rows.zero_();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_fill",
                               [&] { fill_rows_scalar<scalar_t>(x, rows, cols, lr, by_rows); });
  }
  if (by_cols.defined()) {
    by_cols.zero_();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_act_factor_fill_cols",
                               [&] { fill_cols_from_rows<scalar_t>(rows, cols, lr, by_rows, lc, by_cols, N); });
  }

  at::Tensor gram = at::empty({kh * kw * C, kh * kw * C}, x.options());
  // One task per (row combo, column combo) up to transposition; tasks write
  // disjoint blocks. Their products are computed together first (balanced
  // over the threads), then each task assembles its blocks.
  struct Task {
    ComboGeometry geo;
    bool self_transposed;
    TaskProducts products;
  };
  std::vector<Task> tasks;
  std::vector<ProductSpec> specs;
  for (size_t r = 0; r < rows.combos.size(); ++r)
    for (size_t q = 0; q < cols.combos.size(); ++q) {
      // The transposed combo's blocks are the transposes of this one's.
      const auto mirror = std::make_pair(static_cast<size_t>(rows.combos[r].transposed),
                                         static_cast<size_t>(cols.combos[q].transposed));
      if (mirror < std::make_pair(r, q)) continue;
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
      const ComboGeometry geo{rows, cols, lr, lc, rc, cc};
      const bool self_transposed = rc.transposed == static_cast<int>(r) && cc.transposed == static_cast<int>(q);
      tasks.push_back({geo, self_transposed, plan_products(geo, by_rows, by_cols, specs)});
    }
  const std::vector<at::Tensor> products = compute_products(specs, C, vectorised, x.options());
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      finish_combo(tasks[k].geo, by_rows, tasks[k].products, products, tasks[k].self_transposed, kw, gram);
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
