// CUDA kernel of batched_eigh. Factors are grouped by (size, dtype); a group
// of n <= 32 goes through one syevjBatched call, larger ones through syevd,
// one matrix per call, spread over a few pool streams (each fed by a host
// thread of its own) so that independent decompositions overlap. Every
// group's info codes and a finiteness check of its input and results land in
// one device array that is copied to the host once (the only host
// synchronisation: whether to retry or raise must be known before returning). Failed float32 factors are redone in float64; a float64
// failure raises an error naming the factors.
#include "glue.h"

#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <exception>
#include <map>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace kfac_ext::cuda {
namespace {

constexpr const char* kOp = "batched_eigh";
constexpr int64_t kJacobiMaxSize = 32;  // syevjBatched's limit
constexpr int64_t kDefaultPoolStreams = 4;

// Streams (and feeding host threads) for the syevd groups:
// KFAC_EXT_EIGH_STREAMS=1..32 (torch's pool has 32 streams per priority),
// default 4. Read on every call, so that a benchmark can compare settings.
int64_t pool_streams() {
  const char* value = std::getenv("KFAC_EXT_EIGH_STREAMS");
  if (value == nullptr || value[0] == '\0') return kDefaultPoolStreams;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  TORCH_CHECK(end != value && *end == '\0' && parsed >= 1 && parsed <= 32, kOp,
              ": KFAC_EXT_EIGH_STREAMS must be an integer from 1 to 32; got '", value, "'");
  return parsed;
}

// Tests reach the float64 retry through this variable (as on the CPU): every
// float32 result is then discarded as failed.
bool fault_injected() {
  const char* flag = std::getenv("KFAC_EXT_FAULT_EIGH_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

// A decomposed group: values (B, n); vectors (B, n, n) with each matrix
// holding Q^T row-major (cuSOLVER writes Q column-major).
struct Decomposed {
  at::Tensor values, vectors_t;
};

template <typename T>
void decompose_jacobi(at::Tensor& a, at::Tensor& w, at::Tensor& work, int* info, int64_t n,
                      int64_t batch) {
  auto handle = solver_handle(current_stream());
  const int64_t lwork = syevj_batched_workspace<T>(handle, n, batch, ptr<T>(a), ptr<T>(w));
  work = at::empty({std::max<int64_t>(lwork, 1)}, a.options());
  syevj_batched<T>(handle, ptr<T>(a), n, batch, ptr<T>(w), ptr<T>(work), lwork, info);
}

template <typename T>
void decompose_streams(at::Tensor& a, at::Tensor& w, at::Tensor& work, int* info, int64_t n,
                       int64_t batch) {
  const cudaStream_t main = current_stream();
  const int64_t lwork =
      syevd_workspace<T>(solver_handle(main), n, ptr<T>(a), ptr<T>(w));
  const int64_t streams = std::min(batch, pool_streams());
  // One workspace per stream; a stream runs its matrices one after another.
  // All buffers belong to the current stream's pool, and the current stream
  // waits for the side streams below, so their memory cannot be reused early.
  work = at::empty({streams * std::max<int64_t>(lwork, 1)}, a.options());
  std::vector<cudaStream_t> side(static_cast<size_t>(streams), main);
  if (streams > 1) {
    for (auto& s : side) {
      s = c10::cuda::getStreamFromPool(false, a.device().index()).stream();
      stream_wait(s, main);  // inputs were written on the current stream
    }
  }
  // Stream k takes matrices k, k + streams, ... and is fed by a host thread of
  // its own: cuSOLVER's syevd returns only when its matrix is done, so one
  // submitting thread ran the pool's streams one after another (an H200
  // overlapped nothing at n >= 576; benchmarks/table_eigh_groups.py).
  T* a_ptr = ptr<T>(a);
  T* w_ptr = ptr<T>(w);
  T* work_ptr = ptr<T>(work);
  auto run_stream = [&](int64_t k) {
    for (int64_t b = k; b < batch; b += streams) {
      syevd<T>(solver_handle(side[static_cast<size_t>(k)]), a_ptr + b * n * n, n, w_ptr + b * n,
               work_ptr + k * std::max<int64_t>(lwork, 1), lwork, info + b);
    }
  };
  if (streams == 1) {
    run_stream(0);
    return;
  }
  const c10::DeviceIndex device = a.device().index();
  std::vector<std::exception_ptr> errors(static_cast<size_t>(streams));
  std::vector<std::thread> threads;
  for (int64_t k = 1; k < streams; ++k) {
    auto feed = [&, k] {
      try {
        const c10::cuda::CUDAGuard guard(device);
        run_stream(k);
      } catch (...) {
        errors[static_cast<size_t>(k)] = std::current_exception();
      }
    };
    try {
      threads.emplace_back(feed);
    } catch (const std::system_error&) {
      feed();  // no thread to be had: feed this stream from here, in order
    }
  }
  try {
    run_stream(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : threads) t.join();
  for (auto s : side) stream_wait(main, s);
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// Decomposes `batch` (B, n, n), contiguous, a private copy (overwritten).
// info (B,) int32 on the device receives the status per matrix.
Decomposed decompose(at::Tensor batch, bool clamp, at::Tensor info) {
  const int64_t count = batch.size(0), n = batch.size(1);
  auto w = at::empty({count, n}, batch.options());
  if (n == 0) return {w, batch};  // nothing to decompose (cuSOLVER rejects n == 0)
  // cuSOLVER need not fail on non-finite input: syevjBatched returned info 0
  // and finite results for a 7x7 factor with one NaN pair off the diagonal
  // (H200, CUDA 13.0), so the input is checked too, before it is overwritten.
  const at::Tensor bad_input = batch.isfinite().logical_not().flatten(1).any(1);
  at::Tensor work;
  AT_DISPATCH_FLOATING_TYPES(batch.scalar_type(), kOp, [&] {
    int* info_ptr = ptr<int>(info);
    if (n <= kJacobiMaxSize) {
      decompose_jacobi<scalar_t>(batch, w, work, info_ptr, n, count);
    } else {
      decompose_streams<scalar_t>(batch, w, work, info_ptr, n, count);
    }
    check_finite_and_clamp<scalar_t>(ptr<scalar_t>(w), cptr<scalar_t>(batch), n, count, clamp,
                                     info_ptr, current_stream());
  });
  info.masked_fill_(bad_input.logical_and(info.eq(0)), kNonFiniteInfo);
  return {w, batch};
}

at::Tensor stack_copy(at::TensorList factors, const std::vector<size_t>& members,
                      at::ScalarType dtype) {
  std::vector<at::Tensor> parts;
  parts.reserve(members.size());
  for (size_t i : members) parts.push_back(factors[i].to(dtype));
  return at::stack(parts).contiguous();  // a fresh buffer: cuSOLVER overwrites it
}

std::string describe_failure(int code) {
  if (code == kNonFiniteInfo) return "non-finite eigenvalues or eigenvectors";
  if (code > 0) return "cuSOLVER info " + std::to_string(code) + " (did not converge)";
  return "cuSOLVER info " + std::to_string(code) + " (invalid argument)";
}

// "factors[3] (40x40): cuSOLVER info 7 (did not converge)", comma-separated.
void add_failure(std::string& failures, at::TensorList factors, size_t i, int code) {
  const auto n = std::to_string(factors[i].size(0));
  failures += (failures.empty() ? "" : ", ") + item("factors", i) + " (" + n + "x" + n + "): " +
              describe_failure(code);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> batched_eigh_cuda(
    at::TensorList factors, bool clamp) {
  for (size_t i = 0; i < factors.size(); ++i) {
    const auto name = item("factors", i);
    check_cuda(factors[i], kOp, name);
    check_float(factors[i], kOp, name.c_str());
    check_square(factors[i], kOp, name);
    check_same_device(factors[i], factors[0], kOp, name.c_str(), "factors[0]");
  }
  std::vector<at::Tensor> values(factors.size()), vectors(factors.size());
  if (factors.empty()) return {values, vectors};
  const c10::cuda::CUDAGuard guard(factors[0].device());

  // Group by (size, dtype); std::map keeps the work order deterministic.
  std::map<std::pair<int64_t, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < factors.size(); ++i) {
    groups[{factors[i].size(0), static_cast<int>(factors[i].scalar_type())}].push_back(i);
  }
  const auto int_opts = factors[0].options().dtype(at::kInt);
  auto info = at::zeros({static_cast<int64_t>(factors.size())}, int_opts);
  // slot[i]: factor i's place in `info` and in its group's batch.
  std::vector<int64_t> slot(factors.size());
  std::vector<std::pair<std::vector<size_t>, Decomposed>> done;
  int64_t next = 0;
  for (const auto& [key, members] : groups) {
    const auto dtype = static_cast<at::ScalarType>(key.second);
    auto result = decompose(stack_copy(factors, members, dtype), clamp,
                            info.narrow(0, next, static_cast<int64_t>(members.size())));
    for (size_t k = 0; k < members.size(); ++k) slot[members[k]] = next + static_cast<int64_t>(k);
    next += static_cast<int64_t>(members.size());
    done.emplace_back(members, std::move(result));
  }
  // Host synchronisation (documented): the info codes decide retry / error.
  const auto info_host = info.cpu();
  const int* codes = info_host.const_data_ptr<int>();

  std::map<int64_t, std::vector<size_t>> retry;  // float64 redo, grouped by size
  std::string failures;
  const bool inject = fault_injected();
  for (size_t i = 0; i < factors.size(); ++i) {
    const bool is_float = factors[i].scalar_type() == at::kFloat;
    const int code = codes[slot[i]];
    if (code == 0 && !(inject && is_float)) continue;
    if (is_float) {
      retry[factors[i].size(0)].push_back(i);
    } else {
      add_failure(failures, factors, i, code);
    }
  }

  // Results of the groups that succeeded. Each output owns its memory (ops
  // may not return outputs that alias one another). Q stays column-major
  // (strides (1, n)) as cuSOLVER wrote it: the layout the CPU kernel, LAPACK,
  // torch.linalg.eigh and the op's fake kernel give.
  for (const auto& [members, result] : done) {
    const bool shared = members.size() > 1;
    for (size_t k = 0; k < members.size(); ++k) {
      const size_t i = members[k];
      const auto kk = static_cast<int64_t>(k);
      const auto w = result.values.select(0, kk), vt = result.vectors_t.select(0, kk);
      values[i] = shared ? w.clone() : w;
      vectors[i] = (shared ? vt.clone() : vt).t();
    }
  }

  if (!retry.empty()) {
    auto info64 = at::zeros({static_cast<int64_t>(factors.size())}, int_opts);
    std::vector<std::pair<std::vector<size_t>, Decomposed>> redone;
    int64_t pos = 0;
    for (const auto& group : retry) {
      const std::vector<size_t>& members = group.second;
      auto result = decompose(stack_copy(factors, members, at::kDouble), clamp,
                              info64.narrow(0, pos, static_cast<int64_t>(members.size())));
      for (size_t k = 0; k < members.size(); ++k) slot[members[k]] = pos + static_cast<int64_t>(k);
      pos += static_cast<int64_t>(members.size());
      redone.emplace_back(members, std::move(result));
    }
    // Second host synchronisation, only on this (rare) retry path.
    const auto info64_host = info64.cpu();
    const int* codes64 = info64_host.const_data_ptr<int>();
    for (const auto& [members, result] : redone) {
      for (size_t k = 0; k < members.size(); ++k) {
        const size_t i = members[k];
        const int code = codes64[slot[i]];
        if (code != 0) {
          add_failure(failures, factors, i, code);
          continue;
        }
        const auto kk = static_cast<int64_t>(k);
        values[i] = result.values.select(0, kk).to(at::kFloat);
        vectors[i] = result.vectors_t.select(0, kk).to(at::kFloat).t();
      }
    }
  }
  TORCH_CHECK(failures.empty(), kOp, ": eigendecomposition failed for ", failures,
              " even in float64; the factor probably holds NaN/inf (check the inputs that built it)");
  return {values, vectors};
}

}  // namespace

TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m) { m.impl("batched_eigh", &batched_eigh_cuda); }

}  // namespace kfac_ext::cuda
