#!/usr/bin/env bash
# Every benchmark, one after the other, with bounded time (about 15 minutes on a 2-core CPU; QUICK=1: about 4).
# Results: benchmarks/results/*.json and *.md. Servers listen on 127.0.0.1 only and are stopped at the end.
#   benchmarks/run_all.sh            # CPU; on a machine with CUDA the GPU is used and the fast-path variants added
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
FULL_DIR=${ECGFM_BENCH_FULL_DIR:-/tmp/ecgfm-demo-full}
[ -f "$FULL_DIR/finetuned.pt" ] || $PY -m ecgfm demo-checkpoints --out "$FULL_DIR" --size full

if [ "${QUICK:-0}" = 1 ]; then
  $PY -m benchmarks.bench_request --repeats 5
  $PY -m benchmarks.bench_model --batch-sizes 1,8,32 --name model_small_finetuned
  $PY -m benchmarks.bench_served --size small --concurrency 1,8 --duration-s 5
  exit 0
fi

$PY -m benchmarks.bench_request --repeats 20
# The small parity model (HTTP and batching overheads dominate) and the full ECG-FM architecture (90.4 M params).
$PY -m benchmarks.bench_model --name model_small_finetuned \
  --batch-sizes "$($PY -c 'import torch; print("1,2,4,8,16,32,64,128,256,512,1024" if torch.cuda.is_available() else "1,2,4,8,16,32,64")')"
$PY -m benchmarks.bench_model --checkpoint "$FULL_DIR/finetuned.pt" --name model_full_finetuned \
  --variants "$($PY -c 'import torch; print("fp32,fp32+fft,bf16+fft,bf16+fft+compile" if torch.cuda.is_available() else "fp32,fp32+fft,bf16+fft")')" \
  --batch-sizes "$($PY -c 'import torch; print("1,2,4,8,16,32,64,128,256,512,1024" if torch.cuda.is_available() else "1,2,4,8")')" \
  --budget-s 90
$PY -m benchmarks.bench_served --size small --concurrency 1,8,32 --duration-s 15
$PY -m benchmarks.bench_served --size full --concurrency 1,4 --duration-s 40 --max-requests 200
$PY -m benchmarks.bench_pos_conv --batch-sizes 1,8
# 10-minute memory soak of the BentoML service (both models): SOAK=1 benchmarks/run_all.sh
if [ "${SOAK:-0}" = 1 ]; then $PY -m benchmarks.soak --size small --concurrency 4 --duration-s 600; fi
