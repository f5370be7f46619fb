// cuSOLVER symmetric eigendecompositions: syevjBatched (Jacobi, all matrices
// of a batch in one call) for small factors, syevd (divide and conquer, one
// matrix per call; the glue spreads calls over a pool of streams) for larger
// ones; a finiteness check + clamp kernel that folds NaN/inf results into the
// info array, so that one device-to-host copy tells the host everything.
//
// Matrices are symmetric, so row-major and column-major inputs agree; we pass
// CUBLAS_FILL_MODE_UPPER (column-major), i.e. the row-major lower triangle,
// the triangle torch.linalg.eigh reads by default. Eigenvectors come back as
// columns of a column-major matrix: the row-major buffer holds Q^T.
#include <map>
#include <mutex>
#include <tuple>

#include "cuda_errors.h"
#include "kernels.h"

namespace kfac_ext::cuda {
namespace {

constexpr cusolverEigMode_t kJob = CUSOLVER_EIG_MODE_VECTOR;
constexpr cublasFillMode_t kUplo = CUBLAS_FILL_MODE_UPPER;

int to_int(int64_t v, const char* what) {
  if (v > INT32_MAX) {
    throw std::runtime_error(std::string("kfac_ext CUDA: batched_eigh: ") + what + " = " +
                             std::to_string(v) + " exceeds the 32-bit range of cuSOLVER");
  }
  return static_cast<int>(v);
}

int current_device() {
  int device = 0;
  KFAC_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// Jacobi parameters: cuSOLVER's defaults (tolerance at machine precision,
// 100 sweeps, eigenvalues sorted ascending). Read-only once made, so shared.
syevjInfo_t jacobi_params() {
  static const syevjInfo_t params = [] {
    syevjInfo_t p = nullptr;
    KFAC_CUSOLVER_CHECK(cusolverDnCreateSyevjInfo(&p));
    KFAC_CUSOLVER_CHECK(cusolverDnXsyevjSetSortEig(p, 1));
    return p;
  }();
  return params;
}

// Workspace sizes do not change for a given (device, kind, dtype, n, batch):
// ask cuSOLVER once.
using WorkspaceKey = std::tuple<int, int, int, int64_t, int64_t>;
std::mutex workspace_mutex;
std::map<WorkspaceKey, int64_t> workspace_sizes;

template <typename Query>
int64_t cached_workspace(const WorkspaceKey& key, Query query) {
  {
    std::lock_guard<std::mutex> lock(workspace_mutex);
    auto it = workspace_sizes.find(key);
    if (it != workspace_sizes.end()) return it->second;
  }
  int lwork = 0;
  query(&lwork);
  std::lock_guard<std::mutex> lock(workspace_mutex);
  workspace_sizes[key] = lwork;
  return lwork;
}

cusolverStatus_t syevd_size(cusolverDnHandle_t h, int n, const float* a, const float* w, int* lw) {
  return cusolverDnSsyevd_bufferSize(h, kJob, kUplo, n, a, n, w, lw);
}
cusolverStatus_t syevd_size(cusolverDnHandle_t h, int n, const double* a, const double* w, int* lw) {
  return cusolverDnDsyevd_bufferSize(h, kJob, kUplo, n, a, n, w, lw);
}
cusolverStatus_t syevd_call(cusolverDnHandle_t h, int n, float* a, float* w, float* work, int lw,
                            int* info) {
  return cusolverDnSsyevd(h, kJob, kUplo, n, a, n, w, work, lw, info);
}
cusolverStatus_t syevd_call(cusolverDnHandle_t h, int n, double* a, double* w, double* work, int lw,
                            int* info) {
  return cusolverDnDsyevd(h, kJob, kUplo, n, a, n, w, work, lw, info);
}
cusolverStatus_t syevj_size(cusolverDnHandle_t h, int n, const float* a, const float* w, int* lw,
                            int batch) {
  return cusolverDnSsyevjBatched_bufferSize(h, kJob, kUplo, n, a, n, w, lw, jacobi_params(), batch);
}
cusolverStatus_t syevj_size(cusolverDnHandle_t h, int n, const double* a, const double* w, int* lw,
                            int batch) {
  return cusolverDnDsyevjBatched_bufferSize(h, kJob, kUplo, n, a, n, w, lw, jacobi_params(), batch);
}
cusolverStatus_t syevj_call(cusolverDnHandle_t h, int n, float* a, float* w, float* work, int lw,
                            int* info, int batch) {
  return cusolverDnSsyevjBatched(h, kJob, kUplo, n, a, n, w, work, lw, info, jacobi_params(), batch);
}
cusolverStatus_t syevj_call(cusolverDnHandle_t h, int n, double* a, double* w, double* work, int lw,
                            int* info, int batch) {
  return cusolverDnDsyevjBatched(h, kJob, kUplo, n, a, n, w, work, lw, info, jacobi_params(), batch);
}

constexpr int kCheckThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kCheckThreads)
    check_finite_and_clamp_kernel(T* w, const T* v, int64_t n, bool clamp, int* info) {
  __shared__ int bad;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const int64_t b = blockIdx.x;
  T* wb = w + b * n;
  const T* vb = v + b * n * n;
  int local = 0;
  for (int64_t e = threadIdx.x; e < n; e += kCheckThreads) local |= !isfinite(wb[e]);
  for (int64_t e = threadIdx.x; e < n * n; e += kCheckThreads) local |= !isfinite(vb[e]);
  if (local) atomicOr(&bad, 1);
  __syncthreads();
  if (threadIdx.x == 0 && bad && info[b] == 0) info[b] = kNonFiniteInfo;
  if (clamp) {
    for (int64_t e = threadIdx.x; e < n; e += kCheckThreads) wb[e] = wb[e] > T(0) ? wb[e] : T(0);
  }
}

}  // namespace

cusolverDnHandle_t solver_handle(cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, cusolverDnHandle_t> handles;
  const auto key = std::make_pair(current_device(), stream);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(key);
  if (it != handles.end()) return it->second;
  // One handle per stream: concurrent calls on different streams must not
  // share a handle (its internal state is per handle). The set of streams is
  // bounded (the current stream plus torch's fixed stream pool).
  cusolverDnHandle_t handle = nullptr;
  KFAC_CUSOLVER_CHECK(cusolverDnCreate(&handle));
  KFAC_CUSOLVER_CHECK(cusolverDnSetStream(handle, stream));
  handles.emplace(key, handle);
  return handle;
}

void stream_wait(cudaStream_t waiter, cudaStream_t producer) {
  if (waiter == producer) return;
  cudaEvent_t event = nullptr;
  KFAC_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  KFAC_CUDA_CHECK(cudaEventRecord(event, producer));
  KFAC_CUDA_CHECK(cudaStreamWaitEvent(waiter, event, 0));
  // Destroying a pending event is allowed: its resources go once it completes.
  KFAC_CUDA_CHECK(cudaEventDestroy(event));
}

template <typename T>
int64_t syevd_workspace(cusolverDnHandle_t handle, int64_t n, T* a, T* w) {
  const int ni = to_int(n, "factor size");
  return cached_workspace({current_device(), 0, static_cast<int>(sizeof(T)), n, 1},
                          [&](int* lwork) { KFAC_CUSOLVER_CHECK(syevd_size(handle, ni, a, w, lwork)); });
}

template <typename T>
int64_t syevj_batched_workspace(cusolverDnHandle_t handle, int64_t n, int64_t batch, T* a, T* w) {
  const int ni = to_int(n, "factor size"), bi = to_int(batch, "batch size");
  return cached_workspace({current_device(), 1, static_cast<int>(sizeof(T)), n, batch},
                          [&](int* lwork) {
                            KFAC_CUSOLVER_CHECK(syevj_size(handle, ni, a, w, lwork, bi));
                          });
}

template <typename T>
void syevd(cusolverDnHandle_t handle, T* a, int64_t n, T* w, T* work, int64_t lwork, int* info) {
  KFAC_CUSOLVER_CHECK(syevd_call(handle, to_int(n, "factor size"), a, w, work,
                                 to_int(lwork, "workspace size"), info));
}

template <typename T>
void syevj_batched(cusolverDnHandle_t handle, T* a, int64_t n, int64_t batch, T* w, T* work,
                   int64_t lwork, int* info) {
  KFAC_CUSOLVER_CHECK(syevj_call(handle, to_int(n, "factor size"), a, w, work,
                                 to_int(lwork, "workspace size"), info,
                                 to_int(batch, "batch size")));
}

template <typename T>
void check_finite_and_clamp(T* w, const T* v, int64_t n, int64_t batch, bool clamp, int* info,
                            cudaStream_t stream) {
  if (batch == 0 || n == 0) return;
  check_finite_and_clamp_kernel<T><<<static_cast<unsigned>(batch), kCheckThreads, 0, stream>>>(
      w, v, n, clamp, info);
  KFAC_KERNEL_CHECK();
}

#define KFAC_INSTANTIATE(T)                                                                      \
  template int64_t syevd_workspace<T>(cusolverDnHandle_t, int64_t, T*, T*);                      \
  template int64_t syevj_batched_workspace<T>(cusolverDnHandle_t, int64_t, int64_t, T*, T*);     \
  template void syevd<T>(cusolverDnHandle_t, T*, int64_t, T*, T*, int64_t, int*);                \
  template void syevj_batched<T>(cusolverDnHandle_t, T*, int64_t, int64_t, T*, T*, int64_t,      \
                                 int*);                                                          \
  template void check_finite_and_clamp<T>(T*, const T*, int64_t, int64_t, bool, int*,            \
                                          cudaStream_t);
KFAC_INSTANTIATE(float)
KFAC_INSTANTIATE(double)
#undef KFAC_INSTANTIATE

}  // namespace kfac_ext::cuda
