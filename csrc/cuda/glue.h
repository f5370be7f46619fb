// Shared pieces of the torch glue for the CUDA kernels (*_cuda.cpp): the
// argument checks (the CPU kernels' helpers, so that both devices fail with
// the same messages), the current stream / cuBLAS handle, and pointer access.
// Only the glue includes ATen; the kernels (.cu) see raw pointers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "kernels.h"

namespace kfac_ext::cuda {


// Upper-left (rows x cols) block of a row-major matrix, as a strided view
// that at::addmm_ writes in place (unit column stride: cuBLAS takes it as is).
inline at::Tensor block(at::Tensor& m, int64_t rows, int64_t cols) {
  return m.narrow(0, 0, rows).narrow(1, 0, cols);
}

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// torch's per-thread handle, bound to the current stream (and honouring
// torch.backends.cuda.matmul.allow_tf32, like torch's own GEMMs).
inline cublasHandle_t blas_handle() { return at::cuda::getCurrentCUDABlasHandle(); }

inline void check_cuda(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor; got device ", t.device());
}

template <typename T>
T* ptr(at::Tensor& t) {
  return t.data_ptr<T>();
}
template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.const_data_ptr<T>();
}

}  // namespace kfac_ext::cuda
