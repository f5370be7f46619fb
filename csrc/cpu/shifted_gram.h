// Shifted Gram product of a channels-last matrix with itself, the hot loop of
// the Conv2d activation factor (conv_act_factor.cpp). Plain C++, no torch.
//
//   out[a*C + b] = sum_{q < len} x[q*C + a] * y[q*C + b],   y = x + shift*C
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

// acc (C x C, row-major, double) += X^T Y over `len` positions, where
// X = x[0 .. len*C) and Y = y[0 .. len*C), both with row stride C.
// Requires available(). Single-threaded: callers split long products into
// chunks of positions and give each thread its own accumulator.
void accumulate_float32(const float* x, const float* y, int64_t len, int64_t C, double* acc);

// out (C x C, row-major, float, overwritten) = X^T Y, as above.
void float32(const float* x, const float* y, int64_t len, int64_t C, float* out);

// The channels-last copy these products read: dst[k*C + c] = src[c*channel_stride + k]
// for k < count, and zeros for count <= k < slot (the gap after a row).
// 16 x 16 tiles transposed in registers. Requires available().
void to_channels_last(const float* src, int64_t channel_stride, int64_t count, int64_t C, int64_t slot,
                      float* dst);

}  // namespace kfac_ext::shifted_gram
