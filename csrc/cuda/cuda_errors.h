// Return-code checks for CUDA runtime, cuBLAS and cuSOLVER calls. Every
// failure throws std::runtime_error naming the library, the call as written,
// the library's error and file:line; the torch dispatcher turns it into a
// Python RuntimeError. No torch headers here: the kernels (.cu) include this
// and must compile with nvcc alone in about a second.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <stdexcept>
#include <string>

namespace kfac_ext::cuda {

[[noreturn]] inline void raise_error(const char* library, const char* call, const std::string& what,
                                     const char* file, int line) {
  throw std::runtime_error(std::string("kfac_ext CUDA: ") + library + " call `" + call +
                           "` failed: " + what + " (" + file + ":" + std::to_string(line) + ")");
}

inline const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_INVALID_WORKSPACE: return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default: return "cusolverStatus_t (see cusolver_common.h)";
  }
}

}  // namespace kfac_ext::cuda

#define KFAC_CUDA_CHECK(call)                                                                    \
  do {                                                                                           \
    const cudaError_t kfac_status_ = (call);                                                     \
    if (kfac_status_ != cudaSuccess) {                                                           \
      ::kfac_ext::cuda::raise_error("CUDA", #call, cudaGetErrorString(kfac_status_), __FILE__,   \
                                    __LINE__);                                                   \
    }                                                                                            \
  } while (0)

#define KFAC_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                           \
    const cublasStatus_t kfac_status_ = (call);                                                  \
    if (kfac_status_ != CUBLAS_STATUS_SUCCESS) {                                                 \
      ::kfac_ext::cuda::raise_error("cuBLAS", #call, cublasGetStatusString(kfac_status_),        \
                                    __FILE__, __LINE__);                                         \
    }                                                                                            \
  } while (0)

#define KFAC_CUSOLVER_CHECK(call)                                                                \
  do {                                                                                           \
    const cusolverStatus_t kfac_status_ = (call);                                                \
    if (kfac_status_ != CUSOLVER_STATUS_SUCCESS) {                                               \
      ::kfac_ext::cuda::raise_error(                                                             \
          "cuSOLVER", #call,                                                                     \
          std::string(::kfac_ext::cuda::cusolver_status_name(kfac_status_)) + " (" +             \
              std::to_string(static_cast<int>(kfac_status_)) + ")",                              \
          __FILE__, __LINE__);                                                                   \
    }                                                                                            \
  } while (0)

// After a <<<...>>> launch: a bad configuration shows up here, asynchronous
// faults at the next synchronising call (run compute-sanitizer to place them).
#define KFAC_KERNEL_CHECK() KFAC_CUDA_CHECK(cudaGetLastError())
