#!/usr/bin/env bash
# Every benchmark, one after the other, with bounded time. Results: benchmarks/results/*.json and *.md. Servers
# listen on 127.0.0.1 only and are stopped at the end.
#   benchmarks/run_all.sh                  # all steps: about 30 min on a 2-core CPU (QUICK=1: a 4-minute smoke run)
#   STEPS=model,served benchmarks/run_all.sh   # some steps: request, model, served, latency, saturation, pos_conv,
#                                              # cpu_fastpath (CPU only: int8 and ONNX Runtime, issue #27)
#   SOAK=1 benchmarks/run_all.sh           # adds the 10-minute memory soak
# On a machine with CUDA the GPU is used: larger batch sizes, the fast-path variants, and the served steps run the
# services with the fast path (ECGFM_PRECISION=bf16, ECGFM_POS_CONV=fft) and the binary .npy body at higher
# concurrency. Each step stays under 10 minutes there, so that one step fits one call on a lent GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
FULL_DIR=${ECGFM_BENCH_FULL_DIR:-/tmp/ecgfm-demo-full}
STEPS=${STEPS:-request,model,served,latency,saturation,pos_conv}
CUDA=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
[ -f "$FULL_DIR/finetuned.pt" ] || $PY -m ecgfm demo-checkpoints --out "$FULL_DIR" --size full
step() { [[ ",$STEPS," == *",$1,"* ]]; }

if [ "${QUICK:-0}" = 1 ]; then
  $PY -m benchmarks.bench_request --repeats 5
  $PY -m benchmarks.bench_model --batch-sizes 1,8,32 --name model_small_finetuned
  $PY -m benchmarks.bench_served --size small --concurrency 1,8 --duration-s 5
  exit 0
fi

if step request; then $PY -m benchmarks.bench_request --repeats 20; fi

if step model; then
  # The small parity model (HTTP and batching overheads dominate) and the full ECG-FM architecture (90.4 M params).
  if [ "$CUDA" = 1 ]; then
    SMALL_SIZES=1,2,4,8,16,32,64,128,256,512,1024; SIZES=$SMALL_SIZES
    VARIANTS=fp32,fp32+fft,bf16+fft,bf16+fft+compile
  else
    SMALL_SIZES=1,2,4,8,16,32,64; SIZES=1,2,4,8; VARIANTS=fp32,fp32+fft,bf16+fft
  fi
  $PY -m benchmarks.bench_model --name model_small_finetuned --batch-sizes "$SMALL_SIZES"
  $PY -m benchmarks.bench_model --checkpoint "$FULL_DIR/finetuned.pt" --name model_full_finetuned \
    --variants "$VARIANTS" --batch-sizes "$SIZES" --budget-s 90
fi

if step served; then
  if [ "$CUDA" = 1 ]; then
    export ECGFM_PRECISION=bf16 ECGFM_POS_CONV=fft ECGFM_MAX_BATCH_SIZE=${ECGFM_MAX_BATCH_SIZE:-256}
    $PY -m benchmarks.bench_served --size full --body npy --concurrency 1,16,64,256 --duration-s 20 \
      --targets plain,bentoml --name served_full_gpu_npy
    $PY -m benchmarks.bench_served --size full --body json --concurrency 1,16,64 --duration-s 20 \
      --targets plain,bentoml --name served_full_gpu_json
  else
    $PY -m benchmarks.bench_served --size small --concurrency 1,8,32 --duration-s 15
    $PY -m benchmarks.bench_served --size full --concurrency 1,4 --duration-s 40 --max-requests 200
  fi
fi

if step latency; then  # one client, served vs the raw forward of the same record, side by side
  if [ "$CUDA" = 1 ]; then export ECGFM_PRECISION=bf16 ECGFM_POS_CONV=fft; fi
  $PY -m benchmarks.bench_latency --size full --targets bentoml,bentoml-nobatch,plain --requests 40
fi

if step saturation; then  # served vs raw throughput in alternating windows
  if [ "$CUDA" = 1 ]; then
    ECGFM_PRECISION=bf16 ECGFM_POS_CONV=fft ECGFM_MAX_BATCH_SIZE=${ECGFM_MAX_BATCH_SIZE:-256} \
      $PY -m benchmarks.bench_saturation --size full --concurrency 128 --raw-batch-size 256 --pairs 3 --window-s 20
  else
    $PY -m benchmarks.bench_saturation --size full --concurrency 4 --pairs 3 --window-s 30
  fi
fi

if step cpu_fastpath; then  # int8 / ONNX Runtime against fp32 side by side, then the served int8 against its raw speed
  if [ "$CUDA" = 0 ]; then
    $PY -m benchmarks.bench_cpu_fastpath --checkpoint "$FULL_DIR/finetuned.pt" --batch-sizes 1,4,8
    ECGFM_BENCH_FULL_DIR="$FULL_DIR" ECGFM_PRECISION=int8 ECGFM_POS_CONV=fft $PY -m benchmarks.bench_saturation \
      --size full --concurrency 4 --bodies npy --pairs 2 --window-s 60 --name saturation_full_int8_fft_c4
  fi
fi

if step pos_conv; then $PY -m benchmarks.bench_pos_conv --batch-sizes 1,8; fi
# 10-minute memory soak of the BentoML service (both models)
if [ "${SOAK:-0}" = 1 ]; then $PY -m benchmarks.soak --size small --concurrency 4 --duration-s 600; fi
