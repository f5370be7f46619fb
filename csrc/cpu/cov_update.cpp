// Covariance-factor updates, in place, one triangle computed and mirrored:
//   cov_update_:          F <- beta*F + alpha * X^T X          (X: rows x d, optionally [X, 1])
//   channel_cov_update_:  F <- beta*F + alpha * sum_n X[n] X[n]^T   (X: N x C x L)
// F is taken to be symmetric: only its upper triangle is read.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../checks.h"
#include "channel_gram.h"
#include "symmetric.h"

namespace kfac_ext::cpu {
namespace {

// channel_cov_update_ batches the per-sample products up to this many
// channels (where a triangle saves nothing: see symmetric.cpp's leaf size),
// with scratch space of at most kChunkElements.
constexpr int64_t kBatchedChannels = 128;
constexpr int64_t kChunkElements = int64_t{1} << 20;
// Above kBatchedChannels, samples with at least this many positions get one
// triangle update each, straight from x; shorter ones are gathered first.
constexpr int64_t kMinPerSampleLength = 64;

// factor[0:d, d] (the bias column) <- beta*that + alpha * column sums of x, and
// factor[d, d] <- beta*that + alpha*rows: the ones column of [X, 1] without a
// copy. One pass over x, column blocks in parallel, sums in double precision.
void update_ones_column(at::Tensor& factor, const at::Tensor& x, double alpha, double beta) {
  const int64_t rows = x.size(0), d = x.size(1), ld = factor.stride(0);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "update_ones_column", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* pf = factor.data_ptr<scalar_t>();
    // beta == 0 ignores the old values (NaN included), as addmm does.
    auto blend = [&](scalar_t old, double add) {
      return static_cast<scalar_t>(beta == 0.0 ? alpha * add : beta * old + alpha * add);
    };
    const int64_t grain = std::max<int64_t>(16, 65536 / std::max<int64_t>(rows, 1));
    at::parallel_for(0, d, grain, [&](int64_t j0, int64_t j1) {
      std::vector<double> sums(j1 - j0, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = px + r * xs0;
        for (int64_t j = j0; j < j1; ++j) sums[j - j0] += row[j * xs1];
      }
      for (int64_t j = j0; j < j1; ++j) pf[j * ld + d] = blend(pf[j * ld + d], sums[j - j0]);
    });
    pf[d * ld + d] = blend(pf[d * ld + d], static_cast<double>(rows));
  });
}

// factor <- beta*factor + alpha * sum_n x[n] x[n]^T for float32 x, contiguous
// (N, C, L), with the vectorised channel_gram kernel: threads take groups of
// samples from a shared counter, each adding into its own double upper
// triangle; one pass then blends their sum into factor and mirrors it.
void channel_gram_update(at::Tensor& factor, const at::Tensor& x, double alpha, double beta) {
  const int64_t samples = x.size(0), C = x.size(1), len = x.size(2);
  const int64_t group = channel_gram::samples_per_group(C, len);
  const int64_t groups = (samples + group - 1) / group;
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), groups));
  std::vector<double> acc(static_cast<size_t>(slots * C * C), 0.0);
  const float* px = x.const_data_ptr<float>();
  std::atomic<int64_t> next{0};
  // One range element per thread; a serial fallback gets the whole range once.
  at::parallel_for(0, slots, 1, [&](int64_t slot, int64_t) {
    double* mine = acc.data() + slot * C * C;
    for (int64_t g = next++; g < groups; g = next++) {
      const int64_t n0 = g * group;
      channel_gram::accumulate_float32(px + n0 * C * len, std::min(group, samples - n0), C, len, mine);
    }
  });
  float* pf = factor.data_ptr<float>();
  const int64_t ld = factor.stride(0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t d = c; d < C; ++d) {
      double sum = 0.0;
      for (int64_t s = 0; s < slots; ++s) sum += acc[(s * C + c) * C + d];
      // beta == 0 ignores the old values (NaN included), as addmm does.
      const double old = beta == 0.0 ? 0.0 : beta * static_cast<double>(pf[c * ld + d]);
      pf[c * ld + d] = pf[d * ld + c] = static_cast<float>(old + alpha * sum);
    }
}

void cov_update_cpu(at::Tensor factor, const at::Tensor& x, double alpha, double beta,
                    bool append_ones) {
  const int64_t d = check_cov_update_args(factor, x, append_ones);

  auto main = factor.slice(0, 0, d).slice(1, 0, d);
  if (d > 0) syrk_upper(main, x, alpha, beta);
  if (append_ones) update_ones_column(factor, x, alpha, beta);
  mirror_upper_to_lower(factor);
}

void channel_cov_update_cpu(at::Tensor factor, const at::Tensor& x, double alpha, double beta) {
  check_channel_cov_update_args(factor, x);

  const int64_t samples = x.size(0);
  if (samples == 0 || x.size(2) == 0) {
    // Nothing to add: F <- beta*F (beta == 0 clears, ignoring NaN in F, as addmm).
    beta == 0.0 ? factor.zero_() : factor.mul_(beta);
    return;
  }
  const int64_t channels = x.size(1);
  if (x.scalar_type() == at::kFloat && x.is_contiguous() && channels <= kBatchedChannels &&
      channel_gram::available()) {
    channel_gram_update(factor, x, alpha, beta);
    return;
  }
  if (channels <= kBatchedChannels) {
    // Small C: one GEMM per sample would be all call overhead. Batched
    // products of a bounded chunk of samples, summed into the factor.
    const int64_t chunk = std::max<int64_t>(1, kChunkElements / (channels * channels));
    beta == 0.0 ? factor.zero_() : factor.mul_(beta);
    for (int64_t s0 = 0; s0 < samples; s0 += chunk) {
      const auto part = x.slice(0, s0, std::min(samples, s0 + chunk));
      factor.add_(at::bmm(part, part.transpose(1, 2)).sum(0), alpha);
    }
    mirror_upper_to_lower(factor);  // GEMM kernels need not round (i,j) and (j,i) alike
    return;
  }
  if (x.size(2) < kMinPerSampleLength) {
    // Short L (e.g. 7x7 maps): per-sample GEMMs with K = L run far below peak;
    // the (N*L, C) rows are then small next to the C x C factor, so one copy
    // and a single triangle is cheaper.
    const auto rows = x.transpose(1, 2).reshape({-1, channels});
    syrk_upper(factor, rows, alpha, beta);
    mirror_upper_to_lower(factor);
    return;
  }
  // X[n] X[n]^T == A^T A with A = X[n]^T (L x C, a view): one triangle per
  // sample, accumulated in place; beta applies once.
  for (int64_t s = 0; s < samples; ++s) {
    syrk_upper(factor, x.select(0, s).t(), alpha, s == 0 ? beta : 1.0);
  }
  mirror_upper_to_lower(factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CPU, m) {
  m.impl("cov_update_", &cov_update_cpu);
  m.impl("channel_cov_update_", &channel_cov_update_cpu);
}

}  // namespace kfac_ext::cpu
