#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu (from scripts/build-cuda.sh)
# carried along: checks the CUDA build end to end.
#  1. tiny model: CPU f32 vs CUDA f32 vs CUDA bf16 eval loss on the sample data;
#  2. a Llama-2-7B-shaped random checkpoint (init-model): load to the GPU and eval in bf16,
#     with transformers loading the same folder to the GPU in the same run.
# Writes JSON results under ${OUT:-/tmp/loratune-smoke}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-smoke}"
mkdir -p "$out"
data=examples/data/calendar-sample.jsonl
work=/tmp/loratune-smoke-models
rm -rf "$work"; mkdir -p "$work"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

$lt init-model --preset tiny --out "$work/tiny"
for cfg in "cpu f32" "cuda f32" "cuda bf16"; do
  set -- $cfg
  $lt eval --model "$work/tiny" --data "$data" --device "$1" --dtype "$2" --out "$out/tiny-$1-$2.json" | grep -E "loss|throughput"
done

/usr/bin/time -f "init-model llama2-7b: %e s wall, %M KiB peak RSS" \
  $lt init-model --preset llama2-7b --out "$work/llama2-7b"
sync
cat "$work"/llama2-7b/*.safetensors > /dev/null   # warm page cache, as the target states
$lt eval --model "$work/llama2-7b" --data "$data" --device cuda --out "$out/llama2-7b-cuda-bf16.json" 2>&1 | grep -E "loaded|loss|throughput"
python3 - "$work/llama2-7b" <<'PY'
import sys, time, torch
from transformers import AutoModelForCausalLM
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device_map="cuda")
torch.cuda.synchronize()
print(f"transformers: loaded {sys.argv[1]} to cuda (bf16) in {time.perf_counter() - t:.2f}s")
PY
