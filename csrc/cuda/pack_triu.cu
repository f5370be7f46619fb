// Upper-triangle packing of symmetric matrices for communication (only
// n(n+1)/2 of n^2 entries travel). Up to kListChunk matrices per launch:
// blockIdx.y picks the matrix, a grid-stride loop over its n^2 entries does
// the rest, so one launch serves a whole bucket of factors of any sizes.
// Packed order: row-major upper triangle, diagonal included; row i starts at
// i*n - i*(i-1)/2.
#include <algorithm>

#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksPerMatrix = 1024;

__device__ __forceinline__ int64_t packed_index(int64_t i, int64_t j, int64_t n) {
  return i * n - i * (i - 1) / 2 + (j - i);  // i <= j
}

template <typename T>
__global__ void pack_kernel(TriangleList<T> list, T* __restrict__ packed) {
  const int k = blockIdx.y;
  const int64_t n = list.n[k], s0 = list.stride0[k], s1 = list.stride1[k];
  const T* m = list.mats[k];
  T* dst = packed + list.offset[k];
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    if (j >= i) dst[packed_index(i, j, n)] = m[i * s0 + j * s1];
  }
}

template <typename T>
__global__ void unpack_kernel(TriangleList<T> list, const T* __restrict__ packed, T scale) {
  const int k = blockIdx.y;
  const int64_t n = list.n[k], s0 = list.stride0[k], s1 = list.stride1[k];
  T* m = list.mats[k];
  const T* src = packed + list.offset[k];
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    const T v = i <= j ? src[packed_index(i, j, n)] : src[packed_index(j, i, n)];
    m[i * s0 + j * s1] = scale * v;
  }
}

template <typename T>
dim3 grid_for(const TriangleList<T>& list) {
  const int64_t blocks = (list.max_n * list.max_n + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, kMaxBlocksPerMatrix)),
              static_cast<unsigned>(list.count));
}

}  // namespace

template <typename T>
void pack_triu(const TriangleList<T>& list, T* packed, cudaStream_t stream) {
  if (list.count == 0 || list.max_n == 0) return;
  pack_kernel<T><<<grid_for(list), kThreads, 0, stream>>>(list, packed);
  KFAC_KERNEL_CHECK();
}

template <typename T>
void unpack_triu(const TriangleList<T>& list, const T* packed, T scale, cudaStream_t stream) {
  if (list.count == 0 || list.max_n == 0) return;
  unpack_kernel<T><<<grid_for(list), kThreads, 0, stream>>>(list, packed, scale);
  KFAC_KERNEL_CHECK();
}

template void pack_triu<float>(const TriangleList<float>&, float*, cudaStream_t);
template void pack_triu<double>(const TriangleList<double>&, double*, cudaStream_t);
template void unpack_triu<float>(const TriangleList<float>&, const float*, float, cudaStream_t);
template void unpack_triu<double>(const TriangleList<double>&, const double*, double,
                                  cudaStream_t);

}  // namespace kfac_ext::cuda
