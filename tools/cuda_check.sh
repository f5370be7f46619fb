#!/usr/bin/env bash
# Placeholder: compile-checks csrc/cuda/*.cu (filled in by the CUDA work).
echo "cuda-check: no CUDA sources yet"
