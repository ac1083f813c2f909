#!/usr/bin/env bash
# One short check for a lent single GPU (run from the repository root; ~4 minutes):
# the pipeline equivalence tests on CUDA, gnmt4 bf16 training throughput and MFU (plain),
# plain vs pipelined-on-one-GPU tokens/s with the pipelined run's timeline, and beam-5
# decoding of a 128-sentence batch (gnmt_small, gnmt4; bf16), gnmt4 bf16 batch 128 plain vs the
# one-process wavefront with a CUDA stream per layer.
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-gpu_out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_pipeline_gpu.py \
  2>&1 | tail -n 15 | tee "$out/equivalence.txt"
timeout 90 python3 -m scripts.bench train --model gnmt4 --batch 128 --len 32 --repeats 10 \
  2>&1 | tail -n 3 | tee "$out/bench_train.txt"
timeout 120 python3 -m scripts.bench pipeline_gpu --model gnmt4 --out "$out" \
  2>&1 | tail -n 5 | tee "$out/bench_pipeline_gpu.txt"
timeout 120 python3 -m scripts.bench decode_gpu --out "$out/bench_decode.json" \
  2>&1 | tail -n 3 | tee "$out/bench_decode.txt"
timeout 120 python3 -m scripts.bench wavefront --gpu --chunks 4 8 --out "$out/bench_wavefront_streams.json" \
  2>&1 | tail -n 3 | tee "$out/bench_wavefront_streams.txt"
