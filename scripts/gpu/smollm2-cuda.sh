#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu carried and SmolLM2's GGUF at
# models/smollm2/: the README's main job (configs/smollm2-135m-cpu.toml) on CUDA in bf16,
# to compare with the CPU f32 run step by step (scripts/compare-runs.py, run where both
# metrics files are). Also the base model's eval loss in bf16 on CUDA.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-smollm2-cuda}"
mkdir -p "$out"
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
$lt eval --model "$gguf" --data examples/data/calendar-eval.jsonl --device cuda --out "$out/smollm2-base-eval-cuda.json" 2>&1 | grep -E "loss|throughput"
rm -rf runs/smollm2-calendar-cuda
$lt train configs/smollm2-135m-cpu.toml --set device.name=cuda --set output.dir=runs/smollm2-calendar-cuda 2>&1 | grep -E "eval|done|error" | tail -n 8
cp runs/smollm2-calendar-cuda/metrics.jsonl "$out/smollm2-cuda-metrics.jsonl"
