// The KL-clip reduction sum_layers <P, Γ> in float64. One launch covers up
// to kListChunk layer pairs (blockIdx.y = pair); each block writes its double
// partial sum to a fixed slot and one final block adds the slots in a fixed
// order. No atomics: the result is bitwise reproducible run to run.
#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerEntry = 128;  // ~32k threads per layer: enough to stream a large gradient

// Sum of v over the block, valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    dot_partials_kernel(DotList<T> list, int64_t first_entry, double* __restrict__ partial) {
  const int k = blockIdx.y;
  const T* a = list.a[k];
  const T* b = list.b[k];
  const int64_t n = list.numel[k];
  double s = 0.0;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<int64_t>(kBlocksPerEntry) * kThreads) {
    s += static_cast<double>(a[e]) * static_cast<double>(b[e]);
  }
  const double total = block_sum(s);
  if (threadIdx.x == 0) partial[(first_entry + k) * kBlocksPerEntry + blockIdx.x] = total;
}

__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const double* __restrict__ partial, int64_t count, double* out) {
  double s = 0.0;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) s += partial[e];
  const double total = block_sum(s);
  if (threadIdx.x == 0) *out = total;
}

}  // namespace

int dot_partials_per_entry() { return kBlocksPerEntry; }

template <typename T>
void dot_partials(const DotList<T>& list, int64_t first_entry, double* partial,
                  cudaStream_t stream) {
  if (list.count == 0) return;
  const dim3 grid(kBlocksPerEntry, static_cast<unsigned>(list.count));
  dot_partials_kernel<T><<<grid, kThreads, 0, stream>>>(list, first_entry, partial);
  KFAC_KERNEL_CHECK();
}

void sum_partials(const double* partial, int64_t count, double* out, cudaStream_t stream) {
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(partial, count, out);
  KFAC_KERNEL_CHECK();
}

template void dot_partials<float>(const DotList<float>&, int64_t, double*, cudaStream_t);
template void dot_partials<double>(const DotList<double>&, int64_t, double*, cudaStream_t);

}  // namespace kfac_ext::cuda
