// Channel Gram matrix of channels-first samples: the hot loop of the Conv2d
// gradient factor (channel_cov_update_, cov_update.cpp). Plain C++, no torch.
//
//   acc[c*C + d] += sum_n sum_{t < len} x[(n*C + c)*len + t] * x[(n*C + d)*len + t],   c <= d
//
// i.e. sum_n X_n X_n^T for X_n (C x len) row-major. BLAS computes it as one
// small GEMM per sample (or a batched one) and then sums the per-sample
// results; this kernel keeps the positions in the vector lanes and a 4 x 4
// block of channel pairs in registers across a group of samples that stays
// in cache, and computes only the upper triangle's blocks.
#pragma once

#include <cstdint>

namespace kfac_ext::channel_gram {

// True when this CPU runs the vectorised kernel (AVX-512F); otherwise
// callers use BLAS.
bool available();

// Samples per cache-resident group (at most ~512 KB of x): callers that split
// the samples over threads hand out whole groups.
int64_t samples_per_group(int64_t C, int64_t len);

// acc (C x C, row-major, double): the upper triangle (c <= d) += the sum
// above over `samples` consecutive samples of x (contiguous (samples, C, len)).
// The lower triangle is left as it was. Requires available(). Single-threaded:
// callers split the samples over threads, each with its own acc.
void accumulate_float32(const float* x, int64_t samples, int64_t C, int64_t len, double* acc);

}  // namespace kfac_ext::channel_gram
