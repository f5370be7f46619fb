// inverse_precondition on the CPU: P = G_inv Γ A_inv per layer, the layers
// scheduled as eigen_precondition's are. A layer's two products (e.g. 256x256
// by 256x257) are too small for two threads to share well: run one layer per
// thread, with single-threaded products, from a shared counter, largest first;
// only a layer larger than an even share of the remaining work runs alone with
// multi-threaded products. On the 4-layer transformer of
// benchmarks/table_transformer_step.py the per-layer loop of two-threaded
// products ran about 20 % over its GEMMs' single-thread time halved.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "../checks.h"

namespace kfac_ext::cpu {
namespace {

constexpr const char* kOp = "inverse_precondition";

std::vector<at::Tensor> inverse_precondition_cpu(at::TensorList grads, at::TensorList a_inv,
                                                 at::TensorList g_inv) {
  const size_t layers = grads.size();
  check_inverse_precondition_args(kOp, grads, a_inv, g_inv);
  std::vector<double> cost(layers);
  for (size_t i = 0; i < layers; ++i) {
    const double out = static_cast<double>(grads[i].size(0)), in = static_cast<double>(grads[i].size(1));
    cost[i] = out * in * (out + in);
  }
  std::vector<size_t> order(layers);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });

  std::vector<at::Tensor> result(layers);
  auto run = [&](size_t i) { result[i] = at::mm(at::mm(g_inv[i], grads[i]), a_inv[i]); };
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  double remaining = std::accumulate(cost.begin(), cost.end(), 0.0);
  size_t first_shared = 0;
  while (first_shared < layers && cost[order[first_shared]] * threads > remaining) {
    run(order[first_shared]);
    remaining -= cost[order[first_shared++]];
  }
  std::atomic<size_t> next{first_shared};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (size_t k = next++; k < layers; k = next++) run(order[k]);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) { m.impl("inverse_precondition", &inverse_precondition_cpu); }

}  // namespace kfac_ext::cpu
