// Batched symmetric eigendecomposition of a list of factors on the CPU.
//
// ATen's batched linalg_eigh on the CPU is a sequential loop of LAPACK calls,
// and LAPACK's tridiagonal reduction (BLAS-2) scales poorly across threads on
// K-FAC-sized factors. So the factors are spread over the intra-op threads
// instead, one LAPACK call per factor and thread, largest first and dealt
// round-robin (a near-even split of the n^3 work); each result owns its
// memory. A float32 factor that fails (LAPACK error or non-finite output) is
// redone in float64; only if that fails too is an error raised, naming it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace kfac_ext::cpu {
namespace {

constexpr const char* kOp = "batched_eigh";

// LAPACK's float32 eigensolver rescales badly scaled matrices, so no input
// that is finite in float32 (with finite float32 eigenvalues) makes it fail
// while float64 succeeds; tests reach the float64 retry by setting this
// environment variable, which discards every float32 result as failed.
bool fault_injected() {
  const char* flag = std::getenv("KFAC_EXT_FAULT_EIGH_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

// (eigenvalues, eigenvectors) of one matrix, or nothing when LAPACK fails or
// returns non-finite values.
std::optional<std::tuple<at::Tensor, at::Tensor>> try_eigh(const at::Tensor& a) {
  try {
    auto [values, vectors] = at::linalg_eigh(a);
    if (values.isfinite().all().item<bool>() && vectors.isfinite().all().item<bool>()) {
      return std::make_tuple(values, vectors);
    }
  } catch (const c10::Error&) {
  }
  return std::nullopt;
}

// Runs work(i) for every i in order, spread over the intra-op threads:
// order[t], order[t + T], ... go to thread slot t.
// Below this much work (sum of n^3) waking the thread pool costs more than
// the decompositions themselves.
constexpr double kMinParallelWork = 2.0 * 64 * 64 * 64;

template <typename Work>
void deal_round_robin(const std::vector<size_t>& order, double total_work, Work work) {
  const int64_t count = static_cast<int64_t>(order.size());
  const int64_t slots = std::min<int64_t>(at::get_num_threads(), count);
  if (slots <= 1 || total_work < kMinParallelWork) {
    for (size_t i : order) work(i);
    return;
  }
  at::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      for (int64_t k = s; k < count; k += slots) work(order[k]);
    }
  });
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> batched_eigh_cpu(
    at::TensorList factors, bool clamp) {
  const size_t count = factors.size();
  for (size_t i = 0; i < count; ++i) {
    const auto name = item("factors", i);
    check_float(factors[i], kOp, name.c_str());
    check_square(factors[i], kOp, name);
    check_same_device(factors[i], factors[0], kOp, name.c_str(), "factors[0]");
  }
  std::vector<size_t> order(count);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return factors[a].size(0) > factors[b].size(0); });

  double total_work = 0;
  for (const auto& f : factors) total_work += std::pow(static_cast<double>(f.size(0)), 3);

  const bool fail_float32 = fault_injected();
  std::vector<at::Tensor> values(count), vectors(count);
  std::vector<char> failed(count, 0);
  deal_round_robin(order, total_work, [&](size_t i) {
    const auto& f = factors[i];
    const bool is_double = f.scalar_type() == at::kDouble;
    auto result = (!is_double && fail_float32) ? std::nullopt : try_eigh(f);
    if (!result && !is_double) result = try_eigh(f.to(at::kDouble));  // the float64 retry
    if (!result) {
      failed[i] = 1;
      return;
    }
    auto [d, q] = *result;
    if (clamp) d.clamp_min_(0);
    values[i] = d.to(f.scalar_type());
    vectors[i] = q.to(f.scalar_type());
  });

  std::string names;
  for (size_t i = 0; i < count; ++i) {
    if (!failed[i]) continue;
    const auto n = std::to_string(factors[i].size(0));
    names += (names.empty() ? "" : ", ") + item("factors", i) + " (" + n + "x" + n + ")";
  }
  TORCH_CHECK(names.empty(), kOp, ": eigendecomposition failed for ", names,
              " even in float64 (LAPACK error or non-finite result); the factor probably holds "
              "NaN/inf (check the inputs that built it)");
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("batched_eigh", &batched_eigh_cpu); }

}  // namespace kfac_ext::cpu
