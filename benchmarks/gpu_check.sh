#!/usr/bin/env bash
# GPU verification of the CUDA kernels, from the repository alone (the GPU
# hosts have a CUDA torch, nvcc, cuBLAS/cuSOLVER, CuPy and no package index):
#   1. builds kfac_ext._C with the CUDA kernels in place (setup.py),
#   2. runs the CUDA tests (tests/test_cuda_ops.py and the cuda cases of
#      tests/test_ops.py, test_conv_act_factor.py, test_precondition_grads.py),
#   3. prints the benchmark table (benchmarks/table_gpu.py), whose accuracy
#      columns check every op against the float64 CPU reference, and the
#      batched_eigh breakdown by factor size (benchmarks/table_eigh_groups.py),
#      and a device profile for `kfac-ext bench scaling --profile FILE`
#      (benchmarks/table_scaling_profile.py; FILE = $SCALING_PROFILE),
#   4. K-FAC at scale (benchmarks/table_scale.py --device cuda): SGD, kfac_ext and
#      kfac-pytorch on ResNet-50 (batch 32) and a transformer stack; kfac-pytorch
#      is imported from the git-ignored third_party/kfac-pytorch when present
#      (the GPU hosts have no package index), else its column is left out;
#      bounded by SCALE_TIMEOUT seconds (default 420),
#   5. runs the CUDA op tests once more under compute-sanitizer memcheck, when
#      available (last, and bounded by SANITIZER_TIMEOUT seconds, default 240:
#      under the sanitizer every cuBLAS/cuSOLVER kernel load is slow).
#
#   bash benchmarks/gpu_check.sh            # full: ResNet-50 (batch 32) and ResNet-20
#   QUICK=1 bash benchmarks/gpu_check.sh    # ResNet-20 shapes only, no sanitizer
#   SCALE=1 bash benchmarks/gpu_check.sh    # build + table_scale.py only (< 10 min on one GPU)
#
# third_party/kfac-pytorch is a plain source tree of github.com/gpauloski/kfac-pytorch
# (never committed; e.g. `git archive` of a clone, extracted there).
#
# PY picks the interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_WAIT_POLICY=PASSIVE
status=0
step() { echo; echo "=== gpu_check: $* ==="; }

step "device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: FAILED: $PY has no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
  exit 1
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "-", torch.cuda.get_device_name())'
command -v nvcc >/dev/null && nvcc --version | tail -1

step "build (setup.py build_ext --inplace, CUDA kernels forced on)"
# torch derives CUDA_HOME from the nvcc on PATH; a wrapper such as
# /usr/local/bin/nvcc would make it /usr/local, whose include/ has no crt/.
if [[ -z "${CUDA_HOME:-}" ]]; then
  for home in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")" \
              /usr/local/cuda; do
    if [[ -f "$home/include/cuda_runtime.h" ]]; then export CUDA_HOME=$home; break; fi
  done
fi
echo "CUDA_HOME=${CUDA_HOME:-<torch decides>}"
# The GPU image sets CXX to a g++ wrapper (/opt/gcc/bin/g++) that links
# libstdc++ statically: the extension then held a second copy of the iostream
# code, and formatting a number into an error message segfaulted (2026-11-28,
# H200). Build with the system g++ unless the caller names a compiler.
if [[ -n "${KFAC_EXT_CXX:-}" ]]; then export CXX=$KFAC_EXT_CXX
elif [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++; fi
echo "CXX=${CXX:-<default>}"
# The arch of the visible GPU unless the caller set a list.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST
fi
t0=$(date +%s)
if ! KFAC_EXT_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace; then
  echo "gpu_check: FAILED: the CUDA build"
  exit 1
fi
echo "built in $(( $(date +%s) - t0 )) s for sm ${TORCH_CUDA_ARCH_LIST}"
if nm -D --defined-only kfac_ext/_C*.so 2>/dev/null | grep -q ' _ZNSo9_M_insertIlEERSoT_$'; then
  echo "gpu_check: WARNING: kfac_ext/_C links libstdc++ statically (compiler ${CXX:-c++}):"\
       "error messages with numbers will crash; set KFAC_EXT_CXX to a plain g++"
  status=1
fi
# The build is in place, not installed: the benchmark scripts (run from
# benchmarks/) must find the package in the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# TESTS_K narrows the test selection further (a pytest -k expression).
K_EXTRA=${TESTS_K:+ and ($TESTS_K)}
"$PY" -c 'import torch, kfac_ext.ops
print("CUDA kernel registered for every op:",
      all(torch._C._dispatch_has_kernel_for_dispatch_key(f"kfac_ext::{op}", "CUDA")
          for op in ["cov_update_", "channel_cov_update_", "conv2d_act_factor", "batched_eigh",
                     "eigen_precondition", "pack_triu", "unpack_triu_", "kl_clip_sum"]))' || status=1

if [[ -d third_party/kfac-pytorch/kfac ]]; then
  export PYTHONPATH="$PWD/third_party/kfac-pytorch:$PYTHONPATH"
  echo "kfac-pytorch: third_party/kfac-pytorch (on PYTHONPATH)"
else
  echo "kfac-pytorch: third_party/kfac-pytorch absent (table_scale.py uses an installed one, if any)"
fi
scale_table() {
  step "K-FAC at scale vs kfac-pytorch (table_scale.py --device cuda, at most ${SCALE_TIMEOUT:-420} s)"
  timeout "${SCALE_TIMEOUT:-420}" "$PY" benchmarks/table_scale.py --device cuda ${QUICK:+--quick}
  local rc=$?
  if (( rc == 124 )); then echo "gpu_check: table_scale.py did not finish within ${SCALE_TIMEOUT:-420} s"; fi
  return $rc
}
if [[ -n "${SCALE:-}" ]]; then
  scale_table || status=1
  echo
  if (( status )); then echo "gpu_check: FAILED (see above)"; else echo "gpu_check: all passed"; fi
  exit $status
fi

CUDA_TESTS=(tests/test_cuda_ops.py)
for f in tests/test_ops.py tests/test_conv_act_factor.py tests/test_precondition_grads.py \
         tests/test_preconditioner_lag.py; do [[ -f $f ]] && CUDA_TESTS+=("$f"); done
if "$PY" -c 'import pytest' 2>/dev/null; then
  step "CUDA tests"
  "$PY" -m pytest -q -p no:cacheprovider -rfE --tb=short "${CUDA_TESTS[@]}" \
    -k "(cuda or test_cuda_ops)$K_EXTRA" || status=1
else
  echo "gpu_check: pytest is not installed for $PY: tests NOT run (the table below still checks accuracy)"
  status=1
fi

step "benchmark table"
"$PY" benchmarks/table_gpu.py ${QUICK:+--quick} || status=1
if [[ -z "${QUICK:-}" ]]; then
  step "batched_eigh by factor size (ResNet-50)"
  "$PY" benchmarks/table_eigh_groups.py --streams 2 4 8 || status=1
  step "device profile for kfac-ext bench scaling --profile ${SCALING_PROFILE:-/tmp/kfac_ext_gpu_profile.json}"
  "$PY" benchmarks/table_scaling_profile.py --device cuda --sizes 64,256,1024,2048,4096 \
    --repeats 5 --runs 3 --out "${SCALING_PROFILE:-/tmp/kfac_ext_gpu_profile.json}" || status=1
fi
scale_table || status=1

SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer 2>/dev/null || true)
if [[ -n "$SANITIZER" && -z "${QUICK:-}" ]] && "$PY" -c 'import pytest' 2>/dev/null; then
  step "compute-sanitizer memcheck on tests/test_cuda_ops.py (at most ${SANITIZER_TIMEOUT:-240} s)"
  # PYTORCH_NO_CUDA_MEMORY_CACHING: every allocation is a real cudaMalloc,
  # so an out-of-bounds access cannot hide inside a cached block.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT:-240}" "$SANITIZER" --tool memcheck \
    --error-exitcode 9 --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider --tb=short \
    tests/test_cuda_ops.py -x -k "not opcheck$K_EXTRA"
  rc=$?
  if (( rc == 124 )); then echo "gpu_check: memcheck did not finish within ${SANITIZER_TIMEOUT:-240} s (not a failure of the kernels; rerun with a larger SANITIZER_TIMEOUT)"
  elif (( rc )); then echo "gpu_check: memcheck reported errors (rc $rc)"; status=1; fi
else
  echo "gpu_check: compute-sanitizer not run (${SANITIZER:-not found}${QUICK:+, QUICK set})"
fi

echo
if (( status )); then echo "gpu_check: FAILED (see above)"; else echo "gpu_check: all passed"; fi
exit $status
