// Launchers of the CUDA kernels behind the kfac_ext ops. They take raw
// device pointers, sizes and a stream or library handle (whose stream the
// caller has set), enqueue work and return without synchronising. Matrices
// are row-major (a row stride `ld`, unit column stride) unless said
// otherwise. Instantiated for float and double. The torch glue
// (*_cuda.cpp) checks arguments, allocates outputs and scratch with the
// caching allocator and calls these on the current stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdint>

namespace kfac_ext::cuda {

// ---- cov_update.cu (the mirror also serves conv2d_act_factor) ---------------

// a[j][i] <- a[i][j] for i < j (strictly lower triangle from the upper).
template <typename T>
void mirror_upper_to_lower(T* a, int64_t n, int64_t ld, cudaStream_t stream);

// The ones column of [X, 1] without a copy: for F ((d+1) x (d+1), row stride
// ldf), F[j][d] <- beta*F[j][d] + alpha * sum_r X[r][j] (j < d) and
// F[d][d] <- beta*F[d][d] + alpha*rows; beta == 0 does not read F. Column sums
// in double, deterministic (per-split partials, then a fixed-order sum).
// `partial` is scratch of column_sum_splits(rows) * d doubles.
int64_t column_sum_splits(int64_t rows);
template <typename T>
void ones_column_update(const T* x, int64_t rows, int64_t d, int64_t ldx, T* f, int64_t ldf,
                        double alpha, double beta, double* partial, cudaStream_t stream);

// ---- conv2d_act_factor.cu -----------------------------------------------------

struct ConvGeometry {
  int64_t batch, channels, height, width;  // input (N, C, H, W), contiguous
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t out_h, out_w;                    // output positions T = out_h * out_w
  bool has_bias;                           // a ones column after the C*kh*kw patch columns
};

// Upper triangle of out (D x D, D = C*kh*kw [+1], zero-filled by the caller)
// += U^T U / (N*T^3) for the im2col patch matrix U, built tile by tile in
// shared memory and never materialised. `splits` partitions the N*T rows
// (atomic accumulation); conv_act_factor_splits picks it for a device with
// `sm_count` multiprocessors. The caller mirrors the result.
int64_t conv_act_factor_splits(const ConvGeometry& g, int sm_count);
template <typename T>
void conv_act_factor_upper(const T* x, const ConvGeometry& g, int64_t splits, T* out,
                           cudaStream_t stream);

// ---- pack_triu.cu (pack_triu, unpack_triu_) ----------------------------------

// Up to kListChunk matrices per launch, passed by value as kernel parameters
// (no pointer table to copy to the device). Arbitrary strides.
constexpr int kListChunk = 32;

template <typename T>
struct TriangleList {
  T* mats[kListChunk];
  int64_t n[kListChunk];
  int64_t stride0[kListChunk];
  int64_t stride1[kListChunk];
  int64_t offset[kListChunk];  // where matrix k's triangle starts in the packed buffer
  int count;
  int64_t max_n;
};

// packed[offset + (row-major index of (i, j) in the upper triangle)] <- m[i][j], j >= i.
template <typename T>
void pack_triu(const TriangleList<T>& list, T* packed, cudaStream_t stream);
// m[i][j] <- scale * packed[... (min(i,j), max(i,j)) ...] for every i, j.
template <typename T>
void unpack_triu(const TriangleList<T>& list, const T* packed, T scale, cudaStream_t stream);

// ---- kl_clip_sum.cu -----------------------------------------------------------

template <typename T>
struct DotList {
  const T* a[kListChunk];
  const T* b[kListChunk];
  int64_t numel[kListChunk];
  int count;
  int64_t max_numel;
};

// Blocks per list entry; `partial` needs dot_partials_per_entry() doubles per entry.
int dot_partials_per_entry();
// partial[(first_entry + k) * dot_partials_per_entry() + block] <- that block's
// double sum of a[k] * b[k] over its share (contiguous inputs).
template <typename T>
void dot_partials(const DotList<T>& list, int64_t first_entry, double* partial,
                  cudaStream_t stream);
// *out <- sum of count partials, in a fixed order (deterministic), one block.
void sum_partials(const double* partial, int64_t count, double* out, cudaStream_t stream);

// ---- batched_eigh.cu ----------------------------------------------------------

// cuSOLVER handle for (current device, stream): created once, bound to the
// stream, kept for the life of the process (as torch keeps its own).
cusolverDnHandle_t solver_handle(cudaStream_t stream);

// Orders all work enqueued on `waiter` after this call behind everything
// enqueued so far on `producer` (an event, recorded and waited on; no host wait).
void stream_wait(cudaStream_t waiter, cudaStream_t producer);

// Workspace sizes in elements of T, queried once per (device, n[, batch]) and cached.
template <typename T>
int64_t syevd_workspace(cusolverDnHandle_t handle, int64_t n, T* a, T* w);
template <typename T>
int64_t syevj_batched_workspace(cusolverDnHandle_t handle, int64_t n, int64_t batch, T* a, T* w);

// Eigendecomposition in place: a (n x n, contiguous, symmetric) becomes the
// eigenvectors stored column-major (so the row-major buffer holds Q^T), w the
// ascending eigenvalues, *info cuSOLVER's status (0 = success).
template <typename T>
void syevd(cusolverDnHandle_t handle, T* a, int64_t n, T* w, T* work, int64_t lwork, int* info);
// The same for `batch` n x n matrices (n <= 32), one info per matrix.
template <typename T>
void syevj_batched(cusolverDnHandle_t handle, T* a, int64_t n, int64_t batch, T* w, T* work,
                   int64_t lwork, int* info);

// Per matrix b of a batch: info[b] <- kNonFiniteInfo if its eigenvalues or
// eigenvectors hold NaN/inf (and info[b] was 0); then, if clamp, w <- max(w, 0).
constexpr int kNonFiniteInfo = -1000000;
template <typename T>
void check_finite_and_clamp(T* w, const T* v, int64_t n, int64_t batch, bool clamp, int* info,
                            cudaStream_t stream);

// ---- eigen_precondition.cu ----------------------------------------------------

// C_b = alpha * op(A_b) op(B_b) + beta * C_b for b < batch, all row-major:
// op(A) is M x K, op(B) K x N, C M x N; lda/ldb/ldc are row strides of the
// stored matrices, strides the distance between batch members.
template <typename T>
void gemm_batched(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                  int64_t k, T alpha, const T* a, int64_t lda, int64_t stride_a, const T* b,
                  int64_t ldb, int64_t stride_b, T beta, T* c, int64_t ldc, int64_t stride_c,
                  int64_t batch);

// v[b][i][j] /= dg[b][i] * da[b][j] + damping; v contiguous (batch, out, in).
template <typename T>
void divide_by_eigenvalues(T* v, const T* dg, const T* da, int64_t batch, int64_t out,
                           int64_t in, T damping, cudaStream_t stream);

}  // namespace kfac_ext::cuda
