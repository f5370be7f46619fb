// Eigen-basis preconditioning pieces: strided-batched GEMMs over layers of
// equal shape (row-major wrappers of cublas<t>gemmStridedBatched) and the
// eigenvalue division that sits between the two basis changes.
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
// row-major buffer read column-major is the transpose: so the same op flags
// are passed with A and B swapped and M and N swapped.
#include <algorithm>
#include <climits>

#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

int to_int(int64_t v, const char* what) {
  if (v > INT_MAX || v < 0) {
    throw std::runtime_error(std::string("kfac_ext CUDA: eigen_precondition: ") + what + " = " +
                             std::to_string(v) + " is outside the 32-bit range of cuBLAS");
  }
  return static_cast<int>(v);
}

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float* alpha, const float* a, int lda, long long sa,
                    const float* b, int ldb, long long sb, const float* beta, float* c, int ldc,
                    long long sc, int batch) {
  return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc,
                                   sc, batch);
}
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const double* alpha, const double* a, int lda, long long sa,
                    const double* b, int ldb, long long sb, const double* beta, double* c,
                    int ldc, long long sc, int batch) {
  return cublasDgemmStridedBatched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc,
                                   sc, batch);
}

constexpr int kThreads = 256;

template <typename T>
__global__ void divide_kernel(T* __restrict__ v, const T* __restrict__ dg,
                              const T* __restrict__ da, int64_t out, int64_t in, int64_t total,
                              T damping) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t j = e % in;
    const int64_t row = e / in;         // b * out + i: dg is (batch, out) contiguous
    const int64_t b = row / out;
    v[e] /= dg[row] * da[b * in + j] + damping;
  }
}

}  // namespace

template <typename T>
void gemm_batched(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                  int64_t k, T alpha, const T* a, int64_t lda, int64_t stride_a, const T* b,
                  int64_t ldb, int64_t stride_b, T beta, T* c, int64_t ldc, int64_t stride_c,
                  int64_t batch) {
  if (batch == 0 || m == 0 || n == 0) return;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  KFAC_CUBLAS_CHECK(gemm(handle, op_b, op_a, to_int(n, "n"), to_int(m, "m"), to_int(k, "k"),
                         &alpha, b, to_int(ldb, "ldb"), stride_b, a, to_int(lda, "lda"), stride_a,
                         &beta, c, to_int(ldc, "ldc"), stride_c, to_int(batch, "batch")));
}

template <typename T>
void divide_by_eigenvalues(T* v, const T* dg, const T* da, int64_t batch, int64_t out,
                           int64_t in, T damping, cudaStream_t stream) {
  const int64_t total = batch * out * in;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  divide_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(v, dg, da, out, in,
                                                                           total, damping);
  KFAC_KERNEL_CHECK();
}

#define KFAC_INSTANTIATE(T)                                                                      \
  template void gemm_batched<T>(cublasHandle_t, bool, bool, int64_t, int64_t, int64_t, T,        \
                                const T*, int64_t, int64_t, const T*, int64_t, int64_t, T, T*,   \
                                int64_t, int64_t, int64_t);                                      \
  template void divide_by_eigenvalues<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, T,   \
                                         cudaStream_t);
KFAC_INSTANTIATE(float)
KFAC_INSTANTIATE(double)
#undef KFAC_INSTANTIATE

}  // namespace kfac_ext::cuda
