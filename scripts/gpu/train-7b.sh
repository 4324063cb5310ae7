#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu (scripts/build-cuda.sh) carried and
# SmolLM2's GGUF at models/smollm2/ or dist/tok/smollm2-tokenizer (for its tokenizer): the
# end-to-end 7B job.
#  1. a tokenizer-only tiny model with SmolLM2's tokenizer, then a Llama-2-7B-shaped random
#     bf16 checkpoint with that tokenizer (init-model, vocab 49152);
#  2. loading it to the GPU from a warm page cache: `bench --model` (which times the load,
#     then trains) beside transformers' from_pretrained of the same folder;
#  3. `loratune train configs/llama2-7b-lora.toml`: adapter, metrics and eval loss.
# Logs and the run's metrics/eval go to ${OUT:-/tmp/loratune-7b}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-7b}"
mkdir -p "$out" models
# The tokenizer folder can be carried (dist/tok/smollm2-tokenizer, made the same way here)
# when the 98 MB GGUF does not fit in what travels to the GPU machine.
if [ -d dist/tok/smollm2-tokenizer ]; then
  rm -rf models/smollm2-tokenizer; cp -r dist/tok/smollm2-tokenizer models/smollm2-tokenizer
else
  $lt init-model --preset tiny --tokenizer models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --dtype bf16 --out models/smollm2-tokenizer
fi
/usr/bin/time -f "init-model llama2-7b: %e s wall, %M KiB peak RSS" \
  $lt init-model --preset llama2-7b --tokenizer models/smollm2-tokenizer --out models/llama2-7b-random
sync
cat models/llama2-7b-random/*.safetensors > /dev/null   # warm page cache, as the target states
for i in 1 2; do
  $lt bench --model models/llama2-7b-random --data examples/data/calendar-train.jsonl --device cuda \
    --seq-len 1024 --batch-size 1 --warmup 2 --steps 5 --json "$out/bench-7b-files-$i.json" 2>&1 \
    | grep -E "^model|throughput|device mem|compute" | tee -a "$out/load.log"
done
python3 - models/llama2-7b-random <<'PY' 2>&1 | tee -a "$out/load.log"
import sys, time, torch
from transformers import AutoModelForCausalLM
torch.zeros(1, device="cuda")  # CUDA context first, as loratune's timer starts after it
for i in range(2):
    t = time.perf_counter()
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device_map="cuda")
    torch.cuda.synchronize()
    print(f"transformers: loaded {sys.argv[1]} to cuda (bf16) in {time.perf_counter() - t:.2f}s")
    del m
    torch.cuda.empty_cache()
PY
rm -rf runs/llama2-7b-calendar
/usr/bin/time -f "train: %e s wall" $lt train configs/llama2-7b-lora.toml 2>&1 | tee "$out/train.log" | grep -vE "^\s*step .*tokens/s" | tail -n 25
cp runs/llama2-7b-calendar/metrics.jsonl runs/llama2-7b-calendar/eval.json runs/llama2-7b-calendar/run.json "$out/" 2>/dev/null || true
ls -la runs/llama2-7b-calendar runs/llama2-7b-calendar/best 2>&1 | tee -a "$out/train.log" | tail -n 12
