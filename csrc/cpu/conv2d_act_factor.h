// Geometry of the shift-product algorithm for the Conv2d activation factor
// (csrc/cpu/conv2d_act_factor.cpp). Plain C++, no torch: one spatial axis at a
// time, the 2-D plan is the product of a row plan and a column plan.
//
// Along one axis (size `size`, kernel k, stride s, padding p, dilation d,
// `out` output positions), tap i reads input index u = o*s + i*d - p for
// o in [0, out). Split the input into s phases (u = m*s + phase): tap i reads
// phase (i*d - p) mod s at sub-index m = o + floor((i*d - p) / s), i.e. the
// window [offset_i, offset_i + out) of that phase's sub-array. A pair of taps
// (i, i') therefore multiplies phase_i[m] with phase_i'[m + delta] over tap i's
// window, delta = offset_i' - offset_i. Pairs with the same (phase, partner
// phase, delta) share one "combo": one shifted product over the valid range,
// from which each pair subtracts the segments its window leaves out.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

namespace kfac_ext::conv_plan {

inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// One (phase, partner phase, delta) class of tap pairs along an axis.
struct AxisCombo {
  int64_t phase = 0, partner_phase = 0, delta = 0;
  // Valid range V of the sub-index m: m in phase and m + delta in the partner
  // phase. Outside it every product is zero (the data there is zero).
  int64_t lo = 0, hi = 0;
  // Partition of V by every window boundary of the member taps.
  std::vector<std::pair<int64_t, int64_t>> segments;
  std::vector<int64_t> taps, partner_taps;  // the member pairs (i, i')
  // excluded[t][s]: segment s lies outside tap taps[t]'s window.
  std::vector<std::vector<char>> excluded;
  // needed[s]: some member tap excludes segment s (its band must be computed).
  std::vector<char> needed;
  int transposed = -1;  // index of the (partner_phase, phase, -delta) combo
};

struct AxisPlan {
  int64_t size = 0, kernel = 0, stride = 0, out = 0;
  int64_t sub = 0;  // ceil(size / stride): the longest phase
  int64_t gap = 0;  // max |delta|: zeros needed around each sub-array
  std::vector<int64_t> tap_phase, tap_offset;
  std::vector<AxisCombo> combos;

  int64_t phase_len(int64_t phase) const { return phase < size ? (size - phase + stride - 1) / stride : 0; }
};

inline AxisPlan make_axis_plan(int64_t size, int64_t kernel, int64_t stride, int64_t padding,
                               int64_t dilation, int64_t out) {
  AxisPlan plan;
  plan.size = size;
  plan.kernel = kernel;
  plan.stride = stride;
  plan.out = out;
  plan.sub = (size + stride - 1) / stride;
  for (int64_t i = 0; i < kernel; ++i) {
    const int64_t start = i * dilation - padding;
    plan.tap_offset.push_back(floor_div(start, stride));
    plan.tap_phase.push_back(start - plan.tap_offset.back() * stride);
  }
  std::map<std::tuple<int64_t, int64_t, int64_t>, int> index;
  for (int64_t i = 0; i < kernel; ++i) {
    for (int64_t ip = 0; ip < kernel; ++ip) {
      const auto key = std::make_tuple(plan.tap_phase[i], plan.tap_phase[ip],
                                       plan.tap_offset[ip] - plan.tap_offset[i]);
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, static_cast<int>(plan.combos.size())).first;
        AxisCombo combo;
        std::tie(combo.phase, combo.partner_phase, combo.delta) = key;
        plan.combos.push_back(combo);
      }
      plan.combos[it->second].taps.push_back(i);
      plan.combos[it->second].partner_taps.push_back(ip);
      plan.gap = std::max(plan.gap, std::abs(std::get<2>(key)));
    }
  }
  for (auto& combo : plan.combos) {
    combo.transposed = index.at(std::make_tuple(combo.partner_phase, combo.phase, -combo.delta));
    combo.lo = std::max<int64_t>(0, -combo.delta);
    combo.hi = std::max(combo.lo, std::min(plan.phase_len(combo.phase),
                                           plan.phase_len(combo.partner_phase) - combo.delta));
    // Window of each member tap, clipped to V; its ends cut V into segments.
    std::vector<std::pair<int64_t, int64_t>> windows;
    std::vector<int64_t> cuts = {combo.lo, combo.hi};
    for (int64_t i : combo.taps) {
      const int64_t wlo = std::clamp(plan.tap_offset[i], combo.lo, combo.hi);
      const int64_t whi = std::clamp(plan.tap_offset[i] + out, combo.lo, combo.hi);
      windows.emplace_back(wlo, whi);
      cuts.push_back(wlo);
      cuts.push_back(whi);
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t c = 0; c + 1 < cuts.size(); ++c) combo.segments.emplace_back(cuts[c], cuts[c + 1]);
    combo.needed.assign(combo.segments.size(), 0);
    for (const auto& w : windows) {
      std::vector<char> ex(combo.segments.size());
      for (size_t s = 0; s < combo.segments.size(); ++s) {
        const auto& seg = combo.segments[s];
        ex[s] = !(seg.first >= w.first && seg.second <= w.second);
        combo.needed[s] |= ex[s];
      }
      combo.excluded.push_back(std::move(ex));
    }
  }
  return plan;
}

// Which sub-indices of an axis a copy keeps, and where: kept runs are
// packed, `gap` zeros between runs, so a shift by |delta| <= gap inside a run
// is still one constant offset. The column-major copy only serves the thin
// column bands, so it keeps just the columns near the edges that they touch.
struct AxisKeep {
  std::vector<int64_t> pos;  // packed position of each sub-index, -1 if dropped
  int64_t length = 0;        // packed length
};

inline AxisKeep keep_all(const AxisPlan& plan) {
  AxisKeep keep;
  for (int64_t k = 0; k < plan.sub; ++k) keep.pos.push_back(k);
  keep.length = plan.sub;
  return keep;
}

// Keeps every segment some member tap excludes, widened by the gap so that
// partners (k + delta, |delta| <= gap) fall inside the same run.
inline AxisKeep keep_band_neighbourhoods(const AxisPlan& plan) {
  std::vector<char> want(plan.sub, 0);
  for (const auto& combo : plan.combos)
    for (size_t s = 0; s < combo.segments.size(); ++s)
      if (combo.needed[s])
        for (int64_t k = std::max<int64_t>(0, combo.segments[s].first - plan.gap);
             k < std::min(plan.sub, combo.segments[s].second + plan.gap); ++k)
          want[k] = 1;
  AxisKeep keep;
  keep.pos.assign(plan.sub, -1);
  for (int64_t k = 0; k < plan.sub; ++k) {
    if (!want[k]) continue;
    if (k > 0 && !want[k - 1] && keep.length > 0) keep.length += plan.gap;  // zeros between runs
    keep.pos[k] = keep.length++;
  }
  return keep;
}

// A flat (C, total) copy of the input, one block per (outer phase, inner
// phase) sub-image; a block is `outer_gap` zero rows then the kept outer
// rows, a row is N slots of `inner_sub` values followed by `inner_gap` zeros.
// With the gaps at least the largest shift, a shift by (d_outer, d_inner) is
// one constant flat offset whose out-of-range partners all land on zeros.
struct FlatLayout {
  int64_t batch = 0, outer_len = 0, inner_sub = 0, outer_gap = 0, inner_gap = 0, inner_phases = 1;
  int64_t slot = 0, row = 0, block = 0, lead = 0, total = 0;
  AxisKeep outer_keep;

  FlatLayout(int64_t batch_, const AxisPlan& outer, const AxisPlan& inner, AxisKeep keep)
      : batch(batch_), outer_len(keep.length), inner_sub(inner.sub), outer_gap(outer.gap),
        inner_gap(inner.gap), inner_phases(inner.stride), outer_keep(std::move(keep)) {
    slot = inner_sub + inner_gap;
    row = batch * slot;
    block = (outer_gap + outer_len) * row;
    lead = row;  // covers a negative inner shift from the very first value
    total = lead + outer.stride * inner.stride * block + (outer_gap + 1) * row;
  }
  // Flat position of packed row 0 of the (outer_phase, inner_phase) sub-image.
  int64_t base(int64_t outer_phase, int64_t inner_phase) const {
    return lead + (outer_phase * inner_phases + inner_phase) * block + outer_gap * row;
  }
  // Flat position of sub-index m (kept) of the outer axis, slot n, inner k.
  int64_t index(int64_t outer_phase, int64_t inner_phase, int64_t m, int64_t n, int64_t k) const {
    return base(outer_phase, inner_phase) + outer_keep.pos[m] * row + n * slot + k;
  }
};

}  // namespace kfac_ext::conv_plan
