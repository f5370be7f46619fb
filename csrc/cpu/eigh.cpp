// Batched symmetric eigendecomposition of a list of factors. Factors of equal
// size and dtype go through one batched LAPACK call (torch.linalg.eigh). A
// float32 group that fails (LAPACK error or non-finite output) is redone in
// float64; only if that fails too is an error raised, naming the factor.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"

namespace kfac_ext::cpu {
namespace {

constexpr const char* kOp = "batched_eigh";

// (eigenvalues, eigenvectors) of a (B, n, n) batch, or nothing when LAPACK
// fails or returns non-finite values.
std::optional<std::tuple<at::Tensor, at::Tensor>> try_eigh(const at::Tensor& batch) {
  try {
    auto [values, vectors] = at::linalg_eigh(batch);
    if (values.isfinite().all().item<bool>() && vectors.isfinite().all().item<bool>()) {
      return std::make_tuple(values, vectors);
    }
  } catch (const c10::Error&) {
  }
  return std::nullopt;
}

// LAPACK's float32 eigensolver rescales badly scaled matrices, so no input
// that is finite in float32 (with finite float32 eigenvalues) makes it fail
// while float64 succeeds; tests reach the float64 retry by setting this
// environment variable, which discards every float32 result as failed.
bool fault_injected() {
  const char* flag = std::getenv("KFAC_EXT_FAULT_EIGH_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

[[noreturn]] void raise_failure(at::TensorList factors, const std::vector<size_t>& members) {
  // Find the culprit(s) one by one, in float64, for the message.
  std::string names;
  for (size_t i : members) {
    if (!try_eigh(factors[i].to(at::kDouble).unsqueeze(0))) {
      names += (names.empty() ? "" : ", ") + item("factors", i) + " (" +
               std::to_string(factors[i].size(0)) + "x" + std::to_string(factors[i].size(0)) + ")";
    }
  }
  if (names.empty()) names = "a batch of factors (each alone succeeded)";
  TORCH_CHECK(false, kOp, ": eigendecomposition failed for ", names,
              " even in float64 (LAPACK error or non-finite result); the factor probably holds "
              "NaN/inf (check the inputs that built it)");
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> batched_eigh_cpu(
    at::TensorList factors, bool clamp) {
  for (size_t i = 0; i < factors.size(); ++i) {
    const auto name = item("factors", i);
    check_float(factors[i], kOp, name.c_str());
    check_square(factors[i], kOp, name);
    check_same_device(factors[i], factors[0], kOp, name.c_str(), "factors[0]");
  }
  // Group by (size, dtype); std::map keeps the work order deterministic.
  std::map<std::pair<int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < factors.size(); ++i) {
    groups[{factors[i].size(0), static_cast<int>(factors[i].scalar_type())}].push_back(i);
  }
  std::vector<at::Tensor> values(factors.size()), vectors(factors.size());
  for (const auto& [key, members] : groups) {
    std::vector<at::Tensor> parts;
    parts.reserve(members.size());
    for (size_t i : members) parts.push_back(factors[i]);
    const auto batch = at::stack(parts);
    const auto dtype = batch.scalar_type();
    auto result = try_eigh(batch);
    if (result && dtype != at::kDouble && fault_injected()) result.reset();
    if (!result && dtype != at::kDouble) result = try_eigh(batch.to(at::kDouble));
    if (!result) raise_failure(factors, members);
    auto [d, q] = *result;
    if (clamp) d.clamp_min_(0);
    d = d.to(dtype);
    q = q.to(dtype);
    // Each result gets its own memory (ops may not return outputs that alias
    // one another); the copy is O(n^2) next to the O(n^3) decomposition.
    const bool shared = members.size() > 1;
    for (size_t k = 0; k < members.size(); ++k) {
      const auto dk = d.select(0, static_cast<int64_t>(k));
      const auto qk = q.select(0, static_cast<int64_t>(k));
      values[members[k]] = shared ? dk.clone() : dk;
      vectors[members[k]] = shared ? qk.clone() : qk;
    }
  }
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("batched_eigh", &batched_eigh_cpu); }

}  // namespace kfac_ext::cpu
