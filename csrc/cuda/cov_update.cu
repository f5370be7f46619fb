// Covariance-factor building blocks around the glue's GEMM (X^T X with the
// running average fused, through torch's cuBLAS call): the mirror of the
// upper triangle, which makes the result exactly symmetric, and the ones
// column of [X, 1] from column sums (no copy of X with a ones column).
#include <algorithm>
#include <climits>

#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

void check_int(int64_t v, const char* what) {
  if (v > INT_MAX) {
    throw std::runtime_error(std::string("kfac_ext CUDA: ") + what + " = " + std::to_string(v) +
                             " exceeds the 32-bit range of a launch grid");
  }
}

// Transpose through shared memory (coalesced on both sides); tiles wholly
// above the diagonal have nothing to write and return at once. Source
// (upper) and destination (lower) are disjoint, so in place is safe.
constexpr int kMirrorTile = 32;
constexpr int kMirrorRows = 8;

template <typename T>
__global__ void mirror_kernel(T* a, int64_t n, int64_t ld) {
  __shared__ T tile[kMirrorTile][kMirrorTile + 1];
  const int64_t tile_row = blockIdx.y, tile_col = blockIdx.x;
  if (tile_col > tile_row) return;  // destination must be on or below the diagonal
  // Read the mirror image block: rows tile_col*32.., columns tile_row*32.. (upper side).
  const int64_t src_col = tile_row * kMirrorTile + threadIdx.x;
  for (int r = threadIdx.y; r < kMirrorTile; r += kMirrorRows) {
    const int64_t src_row = tile_col * kMirrorTile + r;
    if (src_row < n && src_col < n) tile[r][threadIdx.x] = a[src_row * ld + src_col];
  }
  __syncthreads();
  const int64_t dst_col = tile_col * kMirrorTile + threadIdx.x;
  for (int r = threadIdx.y; r < kMirrorTile; r += kMirrorRows) {
    const int64_t dst_row = tile_row * kMirrorTile + r;
    if (dst_row < n && dst_col < n && dst_row > dst_col) {
      a[dst_row * ld + dst_col] = tile[threadIdx.x][r];
    }
  }
}

constexpr int kSumCols = 32;
constexpr int kSumRows = 8;
constexpr int64_t kRowsPerSplit = 4096;
constexpr int64_t kMaxSplits = 256;

template <typename T>
__global__ void column_sum_partials_kernel(const T* x, int64_t rows, int64_t d, int64_t ldx,
                                           int64_t rows_per_split, double* partial) {
  __shared__ double part[kSumRows][kSumCols + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = min(rows, r0 + rows_per_split);
  double s = 0.0;
  if (col < d) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kSumRows) s += static_cast<double>(x[r * ldx + col]);
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    double total = 0.0;
    for (int k = 0; k < kSumRows; ++k) total += part[k][threadIdx.x];
    partial[blockIdx.y * d + col] = total;
  }
}

template <typename T>
__global__ void ones_column_finish_kernel(T* f, int64_t d, int64_t ldf, const double* partial,
                                          int64_t splits, double rows, double alpha,
                                          double beta) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j > d) return;
  double s = rows;  // the corner: 1^T 1
  if (j < d) {
    s = 0.0;
    for (int64_t k = 0; k < splits; ++k) s += partial[k * d + j];
  }
  T* dst = f + j * ldf + d;  // row j, column d: the upper side of the bias row/column
  *dst = beta == 0.0 ? static_cast<T>(alpha * s) : static_cast<T>(beta * static_cast<double>(*dst) + alpha * s);
}

}  // namespace

template <typename T>
void mirror_upper_to_lower(T* a, int64_t n, int64_t ld, cudaStream_t stream) {
  if (n <= 1) return;
  const int64_t tiles = (n + kMirrorTile - 1) / kMirrorTile;
  check_int(tiles, "mirror tiles");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  mirror_kernel<T><<<grid, dim3(kMirrorTile, kMirrorRows), 0, stream>>>(a, n, ld);
  KFAC_KERNEL_CHECK();
}

int64_t column_sum_splits(int64_t rows) {
  return std::clamp<int64_t>((rows + kRowsPerSplit - 1) / kRowsPerSplit, 1, kMaxSplits);
}

template <typename T>
void ones_column_update(const T* x, int64_t rows, int64_t d, int64_t ldx, T* f, int64_t ldf,
                        double alpha, double beta, double* partial, cudaStream_t stream) {
  const int64_t splits = column_sum_splits(rows);
  if (d > 0) {
    const int64_t rows_per_split = (rows + splits - 1) / splits;
    const dim3 grid(static_cast<unsigned>((d + kSumCols - 1) / kSumCols), static_cast<unsigned>(splits));
    column_sum_partials_kernel<T><<<grid, dim3(kSumCols, kSumRows), 0, stream>>>(
        x, rows, d, ldx, rows_per_split, partial);
    KFAC_KERNEL_CHECK();
  }
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((d + 1 + threads - 1) / threads);
  ones_column_finish_kernel<T><<<blocks, threads, 0, stream>>>(
      f, d, ldf, partial, splits, static_cast<double>(rows), alpha, beta);
  KFAC_KERNEL_CHECK();
}

#define KFAC_INSTANTIATE(T)                                                                      \
  template void mirror_upper_to_lower<T>(T*, int64_t, int64_t, cudaStream_t);                    \
  template void ones_column_update<T>(const T*, int64_t, int64_t, int64_t, T*, int64_t, double,  \
                                      double, double*, cudaStream_t);
KFAC_INSTANTIATE(float)
KFAC_INSTANTIATE(double)
#undef KFAC_INSTANTIATE

}  // namespace kfac_ext::cuda
