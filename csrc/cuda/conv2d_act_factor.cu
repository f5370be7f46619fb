// Conv2d activation factor A = U^T U / (N*T^3) straight from the NCHW input
// (docs/design.md §2): U is the im2col patch matrix, rows (n, oh, ow),
// columns (c, i, j) in F.unfold order plus a ones column when has_bias.
//
// U is never materialised. Each thread block owns one 64x64 tile of A on or
// above the diagonal and a slice of U's N*T rows; per step it gathers the 16
// patch rows x 64 columns of both of its column ranges from the input into
// shared memory (zero padding and dilation resolved in the gather) and
// accumulates their outer products, 4x4 per thread, like a SGEMM kernel.
// Slices of rows are separate blocks (enough blocks for a large GPU when A
// has few tiles); their partial tiles are atomically added to the output.
// Cost: D^2 N T / 2 multiply-adds (one triangle) and no extra memory.
#include <algorithm>

#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

constexpr int kTile = 64;        // output tile edge
constexpr int kStep = 16;        // patch rows gathered per step
constexpr int kThreadsSide = 16; // 16 x 16 threads, each 4 x 4 outputs (strided by 16)
constexpr int kMicro = kTile / kThreadsSide;
constexpr int kThreads = kThreadsSide * kThreadsSide;
constexpr int kLoadsPerThread = kStep * kTile / kThreads;  // per tile per step

static_assert(kThreads % kStep == 0, "a load pass covers whole columns");

// What a column of U reads: the input at (c, oh*sh + di, ow*sw + dj), the
// constant 1 (bias), or nothing (past the last column).
struct Column {
  int64_t channel_offset;  // c * H * W
  int64_t di, dj;          // i*dil_h - pad_h, j*dil_w - pad_w
  int kind;                // 0: input, 1: ones, 2: zero
};

__device__ Column decode_column(const ConvGeometry& g, int64_t col) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t patch_cols = g.channels * taps;
  Column c{0, 0, 0, 2};
  if (col < patch_cols) {
    const int64_t ch = col / taps, tap = col % taps;
    c.channel_offset = ch * g.height * g.width;
    c.di = (tap / g.kernel_w) * g.dil_h - g.pad_h;
    c.dj = (tap % g.kernel_w) * g.dil_w - g.pad_w;
    c.kind = 0;
  } else if (col == patch_cols && g.has_bias) {
    c.kind = 1;
  }
  return c;
}

// (tile_row, tile_col), tile_row <= tile_col, of the p-th upper tile in row order.
__device__ void upper_tile(int64_t p, int64_t tiles, int64_t* tile_row, int64_t* tile_col) {
  int64_t r = 0;
  while (p >= tiles - r) {
    p -= tiles - r;
    ++r;
  }
  *tile_row = r;
  *tile_col = r + p;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    conv_act_factor_kernel(const T* __restrict__ x, ConvGeometry g, int64_t dim, int64_t tiles,
                           int64_t rows_per_split, T scale, T* __restrict__ out) {
  __shared__ T tile_a[kStep][kTile + 1];
  __shared__ T tile_b[kStep][kTile + 1];
  __shared__ Column cols_a[kTile], cols_b[kTile];
  __shared__ int64_t row_base[kStep];  // n * C * H * W, or -1 past the last row
  __shared__ int64_t row_h[kStep], row_w[kStep];

  int64_t tile_row, tile_col;
  upper_tile(blockIdx.x, tiles, &tile_row, &tile_col);
  const int tid = threadIdx.x;
  if (tid < kTile) {
    cols_a[tid] = decode_column(g, tile_row * kTile + tid);
  } else if (tid < 2 * kTile) {
    cols_b[tid - kTile] = decode_column(g, tile_col * kTile + tid - kTile);
  }

  const int64_t positions = g.out_h * g.out_w;
  const int64_t rows = g.batch * positions;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t last = min(rows, first + rows_per_split);
  const int64_t plane = g.height * g.width;
  const int64_t image = g.channels * plane;

  T acc[kMicro][kMicro] = {};
  const int ty = tid / kThreadsSide, tx = tid % kThreadsSide;
  // Loads: consecutive threads take consecutive patch rows (neighbouring
  // output positions: neighbouring input addresses) of one column.
  const int load_row = tid % kStep, load_col = tid / kStep;
  constexpr int kColsPerPass = kThreads / kStep;

  for (int64_t r0 = first; r0 < last; r0 += kStep) {
    __syncthreads();  // previous step's tiles and row table consumed
    if (tid < kStep) {
      const int64_t r = r0 + tid;
      if (r < last) {
        const int64_t n = r / positions, p = r % positions;
        row_base[tid] = n * image;
        row_h[tid] = (p / g.out_w) * g.stride_h;
        row_w[tid] = (p % g.out_w) * g.stride_w;
      } else {
        row_base[tid] = -1;
      }
    }
    __syncthreads();
    const int64_t base = row_base[load_row];
    const int64_t h0 = row_h[load_row], w0 = row_w[load_row];
#pragma unroll
    for (int k = 0; k < kLoadsPerThread; ++k) {
      const int col = load_col + k * kColsPerPass;
      const Column* cs[2] = {&cols_a[col], &cols_b[col]};
      T* dst[2] = {&tile_a[load_row][col], &tile_b[load_row][col]};
#pragma unroll
      for (int side = 0; side < 2; ++side) {
        const Column& c = *cs[side];
        T v = T(0);
        if (base >= 0) {
          if (c.kind == 1) {
            v = T(1);
          } else if (c.kind == 0) {
            const int64_t h = h0 + c.di, w = w0 + c.dj;
            if (h >= 0 && h < g.height && w >= 0 && w < g.width) {
              v = x[base + c.channel_offset + h * g.width + w];
            }
          }
        }
        *dst[side] = v;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      T a[kMicro], b[kMicro];
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        a[m] = tile_a[k][ty + m * kThreadsSide];
        b[m] = tile_b[k][tx + m * kThreadsSide];
      }
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] += a[i] * b[j];
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t row = tile_row * kTile + ty + i * kThreadsSide;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = tile_col * kTile + tx + j * kThreadsSide;
      if (row < dim && col < dim && row <= col) atomicAdd(&out[row * dim + col], acc[i][j] * scale);
    }
  }
}

int64_t output_dim(const ConvGeometry& g) {
  return g.channels * g.kernel_h * g.kernel_w + (g.has_bias ? 1 : 0);
}

}  // namespace

int64_t conv_act_factor_splits(const ConvGeometry& g, int sm_count) {
  const int64_t tiles = (output_dim(g) + kTile - 1) / kTile;
  const int64_t upper = tiles * (tiles + 1) / 2;
  const int64_t rows = g.batch * g.out_h * g.out_w;
  // About four blocks per multiprocessor, each with at least 32 steps of rows
  // (so that the per-block setup and the atomic flush stay small).
  const int64_t want = (4 * static_cast<int64_t>(std::max(sm_count, 1)) + upper - 1) / upper;
  const int64_t most = std::max<int64_t>(1, rows / (32 * kStep));
  return std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535));
}

template <typename T>
void conv_act_factor_upper(const T* x, const ConvGeometry& g, int64_t splits, T* out,
                           cudaStream_t stream) {
  const int64_t dim = output_dim(g);
  const int64_t tiles = (dim + kTile - 1) / kTile;
  const int64_t upper = tiles * (tiles + 1) / 2;
  const int64_t positions = g.out_h * g.out_w;
  const int64_t rows = g.batch * positions;
  if (dim == 0 || rows == 0) return;
  if (upper > INT32_MAX || splits < 1 || splits > 65535) {
    throw std::runtime_error("kfac_ext CUDA: conv2d_act_factor: factor of size " +
                             std::to_string(dim) + " or " + std::to_string(splits) +
                             " row splits exceed the launch grid");
  }
  // Row slices are whole steps, so no step straddles two blocks' slices.
  const int64_t per_split = ((rows + splits - 1) / splits + kStep - 1) / kStep * kStep;
  const double t = static_cast<double>(positions);
  const T scale = static_cast<T>(1.0 / (static_cast<double>(g.batch) * t * t * t));
  const dim3 grid(static_cast<unsigned>(upper), static_cast<unsigned>(splits));
  conv_act_factor_kernel<T><<<grid, kThreads, 0, stream>>>(x, g, dim, tiles, per_split, scale, out);
  KFAC_KERNEL_CHECK();
}

template void conv_act_factor_upper<float>(const float*, const ConvGeometry&, int64_t, float*,
                                           cudaStream_t);
template void conv_act_factor_upper<double>(const double*, const ConvGeometry&, int64_t, double*,
                                            cudaStream_t);

}  // namespace kfac_ext::cuda
