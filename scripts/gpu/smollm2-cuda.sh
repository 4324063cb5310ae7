#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu carried and SmolLM2's GGUF at
# models/smollm2/ (too large to travel with dist/gpu in one call: see scripts/gpu/model-parts.sh):
# the README's main job (configs/smollm2-135m-cpu.toml) on CUDA in bf16, once per attention
# engine and once with checkpoints offloaded to host memory, to compare with each other and
# with the CPU f32 run step by step (scripts/compare-runs.py, run where the metrics files are).
# Also the base model's eval loss with each engine. Files: $OUT (default /tmp/loratune-smollm2-cuda).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-smollm2-cuda}"
mkdir -p "$out"
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
for engine in flash cudnn; do
  echo "== base eval, attention $engine"
  LORATUNE_ATTENTION=$engine $lt eval --model "$gguf" --data examples/data/calendar-eval.jsonl --device cuda \
    --out "$out/base-eval-$engine.json" 2>&1 | grep -E "loss"
done
# engine, checkpointing (with offload, the default on CUDA)
for run in "flash false" "cudnn false" "cudnn true"; do
  set -- $run
  dir=runs/smollm2-cuda-$1-ckpt-$2
  rm -rf "$dir"
  echo "== train, attention $1, gradient_checkpointing $2"
  LORATUNE_ATTENTION=$1 $lt train configs/smollm2-135m-cpu.toml --set device.name=cuda --set output.dir="$dir" \
    --set train.gradient_checkpointing="$2" > "$out/train-$1-ckpt-$2.log" 2>&1
  grep -E "attention:|checkpoints:|base .* -> final|done" "$out/train-$1-ckpt-$2.log"
  cp "$dir/metrics.jsonl" "$out/metrics-$1-ckpt-$2.jsonl"
done
