// Shifted Gram product of a channels-last matrix with itself, the hot loop of
// the Conv2d activation factor (conv2d_act_factor.cpp). Plain C++, no torch.
//
//   acc[a*C + b] += sum_q x[q*C + a] * y[q*C + b],   y = x + shift*C
//
// for a, b < C: rows q of x are positions, columns channels. BLAS computes the
// same product as a C x len by len x C GEMM, but for the few channels of a
// CNN layer (C = 16..64) it spends as long packing the two skinny operands
// as multiplying them, and a conv factor needs 13 such products of one
// buffer. This kernel reads both operands in place: each position contributes
// the outer product of row q of x (broadcast, one channel at a time) and row
// q of y (whole vectors), accumulated in registers over blocks of positions
// that stay in cache, then added into a double accumulator (so the float32
// rounding error grows with the block length, not with len).
#pragma once

#include <cstdint>

namespace kfac_ext::shifted_gram {

// True when this CPU runs the vectorised kernel (AVX-512F); otherwise
// callers fall back to a GEMM.
bool available();

// Positions q = r*stride + k for r < count, k < len: `count` runs of `len`
// consecutive positions, `stride` apart. A product over a zero-gapped layout
// visits only the runs where both operands can be non-zero.
struct Runs {
  int64_t count, len, stride;
};

// acc (C x C, row-major, double) += X^T Y over the positions q of `runs`:
// acc[a*C + b] += x[q*C + a] * y[q*C + b]. Requires available().
// Single-threaded: callers split long products into chunks of runs and give
// each thread its own accumulator.
void accumulate_float32(const float* x, const float* y, Runs runs, int64_t C, double* acc);

// The channels-last copy these products read: dst[k*C + c] = src[c*channel_stride + k]
// for k < count, and zeros for count <= k < slot (the gap after a row).
// 16 x 16 tiles transposed in registers. Requires available().
void to_channels_last(const float* src, int64_t channel_stride, int64_t count, int64_t C, int64_t slot,
                      float* dst);

}  // namespace kfac_ext::shifted_gram
