#!/usr/bin/env bash
# Compile-check of the CUDA sources (make cuda-check; part of make test / CI).
#
# CI has nvcc but no GPU and a CPU-only torch, so the CUDA code cannot be
# built into the extension or run there. What can be checked is that every
# source compiles, against the real CUDA runtime, cuBLAS and cuSOLVER headers
# and torch's ATen/c10 CUDA headers (the CPU wheel ships them):
#   csrc/cuda/*.cu   nvcc -c (kernels: CUDA/cuBLAS/cuSOLVER headers only)
#   csrc/cuda/*.cpp  g++ -c  (torch glue, against the CPU wheel's headers)
# Objects go to a temporary directory and are never linked. Warnings in our
# own code are errors; library headers are included as system headers.
#
# Environment: PY (python of the venv, default .venv/bin/python), NVCC,
# KFAC_EXT_CUDA_ARCHS (space-separated SM numbers, default "90": the H100 /
# H200 machines the kernels are verified on).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ARCHS=${KFAC_EXT_CUDA_ARCHS:-90}
# cuBLAS / cuSOLVER / cuSPARSE (torch's CUDAContext.h includes cusparse.h)
# header wheels matching the CUDA 13 torch builds; the toolkit here has none.
HEADER_WHEELS="nvidia-cusolver==12.0.4.66 nvidia-cublas==13.1.1.3 nvidia-cusparse==12.9.4.2"

NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "cuda-check: SKIPPED: nvcc not found (no CUDA toolkit); CUDA sources were not compile-checked"
  exit 0
fi

shopt -s nullglob
CU_SOURCES=(csrc/cuda/*.cu)
CPP_SOURCES=(csrc/cuda/*.cpp)
if (( ${#CU_SOURCES[@]} + ${#CPP_SOURCES[@]} == 0 )); then
  echo "cuda-check: no CUDA sources under csrc/cuda"
  exit 0
fi

start=$(date +%s)
# nvcc's own include dir (the toolkit it belongs to), for the g++ compiles.
CUDA_INC="$(cd "$(dirname "$(readlink -f "$NVCC")")/.." && pwd)/include"
if [[ ! -f "$CUDA_INC/cuda_runtime.h" ]]; then
  # nvcc may be a wrapper script: ask it where its headers are.
  CUDA_INC=$("$NVCC" -E -x cu - --dryrun 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)
  CUDA_INC=${CUDA_INC%/}
fi
if [[ ! -f "$CUDA_INC/cuda_runtime.h" ]]; then
  echo "cuda-check: FAILED: cannot find cuda_runtime.h next to $NVCC (looked in '$CUDA_INC')"
  exit 1
fi

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || {
  echo "cuda-check: FAILED: $PY does not run (make the venv first: make build)"; exit 1; }
NV_INC="$SITE/nvidia/cu13/include"
if [[ ! -f "$NV_INC/cublas_v2.h" || ! -f "$NV_INC/cusolverDn.h" || ! -f "$NV_INC/cusparse.h" ]]; then
  echo "cuda-check: installing cuBLAS/cuSOLVER/cuSPARSE headers into the venv ($HEADER_WHEELS)"
  # --no-deps: only the headers are needed, not the runtime libraries they pull.
  # shellcheck disable=SC2086
  if ! "$PY" -m pip install -q --no-deps $HEADER_WHEELS; then
    echo "cuda-check: FAILED: could not install $HEADER_WHEELS (no package index?)"
    exit 1
  fi
fi
TORCH_INC=$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))') || {
  echo "cuda-check: FAILED: torch is not importable from $PY"; exit 1; }
# The ABI flag must match the torch build or std::string symbols differ.
CXX11_ABI=$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')

OBJ_DIR=$(mktemp -d /tmp/kfac_ext_cuda_check.XXXXXX)
trap 'rm -rf "$OBJ_DIR"' EXIT

GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
SYS_INC=(-isystem "$NV_INC" -isystem "$CUDA_INC")
for d in $TORCH_INC; do SYS_INC+=(-isystem "$d"); done

JOBS=${KFAC_EXT_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}

compile() {  # compile <source> <command...>, in the background; result in $OBJ_DIR/<name>.{log,rc,time}
  local src=$1; shift
  local base="$OBJ_DIR/$(basename "$src")"
  (
    t0=$(date +%s%N)
    "$@" >"$base.log" 2>&1
    echo $? >"$base.rc"
    echo $(( ($(date +%s%N) - t0) / 100000000 )) >"$base.time"
  ) &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
}

for src in "${CU_SOURCES[@]}"; do
  # Kernels include only CUDA runtime / cuBLAS / cuSOLVER headers (and our own).
  compile "$src" "$NVCC" -c "$src" -o "$OBJ_DIR/$(basename "$src").o" \
    -std=c++17 -O2 "${GENCODE[@]}" -Xcompiler -fPIC \
    -isystem "$NV_INC" -Icsrc/cuda \
    -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror
done

for src in "${CPP_SOURCES[@]}"; do
  # Torch glue: the ATen/c10 CUDA headers of the CPU wheel, not linked.
  compile "$src" "${CXX:-g++}" -c "$src" -o "$OBJ_DIR/$(basename "$src").o" \
    -std=c++20 -O0 -g0 -fPIC -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DKFAC_EXT_WITH_CUDA \
    -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" -DTORCH_EXTENSION_NAME=_C \
    "${SYS_INC[@]}" -Icsrc/cuda -Icsrc -Wall -Wextra -Werror
done
wait

failed=0
for src in "${CU_SOURCES[@]}" "${CPP_SOURCES[@]}"; do
  base="$OBJ_DIR/$(basename "$src")"
  if [[ "$(cat "$base.rc" 2>/dev/null)" == 0 ]]; then
    tenths=$(cat "$base.time")
    printf 'cuda-check: ok    %-40s %3d.%d s\n' "$src" $((tenths / 10)) $((tenths % 10))
  else
    printf 'cuda-check: ERROR %s\n' "$src"
    sed 's/^/    /' "$base.log"
    failed=1
  fi
done

# Not linked, but one link error is still catchable: a launcher the glue
# calls that no kernel object defines (a missing template instantiation).
if (( ! failed )) && (( ${#CU_SOURCES[@]} > 0 && ${#CPP_SOURCES[@]} > 0 )) && command -v nm >/dev/null; then
  cu_objs=() cpp_objs=()
  for src in "${CU_SOURCES[@]}"; do cu_objs+=("$OBJ_DIR/$(basename "$src").o"); done
  for src in "${CPP_SOURCES[@]}"; do cpp_objs+=("$OBJ_DIR/$(basename "$src").o"); done
  nm -C --defined-only "${cu_objs[@]}" 2>/dev/null | grep -o 'kfac_ext::cuda::.*' | sort -u >"$OBJ_DIR/defined"
  nm -C --undefined-only "${cpp_objs[@]}" 2>/dev/null | grep -o 'kfac_ext::cuda::.*' | sort -u >"$OBJ_DIR/needed"
  missing=$(comm -23 "$OBJ_DIR/needed" "$OBJ_DIR/defined")
  if [[ -n "$missing" ]]; then
    echo "cuda-check: ERROR the glue calls launchers that no .cu object defines:"
    echo "$missing" | sed 's/^/    /'
    failed=1
  else
    echo "cuda-check: ok    every kfac_ext::cuda symbol the glue uses is defined by a .cu object"
  fi
fi

elapsed=$(( $(date +%s) - start ))
if (( failed )); then
  echo "cuda-check: FAILED (${#CU_SOURCES[@]} .cu, ${#CPP_SOURCES[@]} .cpp; ${elapsed} s)"
  exit 1
fi
echo "cuda-check: all ${#CU_SOURCES[@]} .cu and ${#CPP_SOURCES[@]} .cpp CUDA sources compile (sm_${ARCHS// /,sm_}; ${elapsed} s)"
