#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu (scripts/build-cuda.sh) and
# dist/tok/smollm2-tokenizer (or SmolLM2's GGUF) carried: generation speed on a
# Llama-2-7B-shaped random bf16 checkpoint, loratune beside transformers' generate, greedy,
# fixed length (EOS ignored), one sequence: without an adapter, then with an r16 q/k/v/o
# adapter applied unmerged (PEFT's) in both tools.
# Figures go to ${OUT:-/tmp/loratune-gen-7b}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-gen-7b}"
n="${NEW_TOKENS:-256}"
mkdir -p "$out" models
if [ -d dist/tok/smollm2-tokenizer ]; then
  rm -rf models/smollm2-tokenizer; cp -r dist/tok/smollm2-tokenizer models/smollm2-tokenizer
elif [ ! -d models/smollm2-tokenizer ]; then
  $lt init-model --preset tiny --tokenizer models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --dtype bf16 --out models/smollm2-tokenizer
fi
m=models/llama2-7b-random
[ -f "$m/config.json" ] || $lt init-model --preset llama2-7b --tokenizer models/smollm2-tokenizer --out "$m" | tail -n 1
# A PEFT adapter (r16, alpha 32, q/k/v/o) with random B, so it changes the output.
python3 - "$m" "$out/adapter" <<'PY'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1]))
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
g = torch.Generator().manual_seed(0)
sd = {k: torch.randn(p.shape, generator=g) * 0.01 for k, p in model.named_parameters() if "lora_" in k}
from safetensors.torch import save_file
import json, os
os.makedirs(sys.argv[2], exist_ok=True)
save_file({k.replace(".default", ""): v.contiguous() for k, v in sd.items()}, f"{sys.argv[2]}/adapter_model.safetensors")
model.peft_config["default"].save_pretrained(sys.argv[2])
print(f"adapter: {len(sd)} tensors -> {sys.argv[2]}")
PY
prompt="Write a short story about a lighthouse keeper who finds a message in a bottle."
for adapter in "" "$out/adapter"; do
  tag=base; extra=(); [ -n "$adapter" ] && { tag=lora; extra=(--adapter "$adapter"); }
  for i in 1 2 3; do
    $lt generate --model "$m" "${extra[@]}" --device cuda --prompt "$prompt" --max-new-tokens "$n" --ignore-eos \
      --json "$out/loratune-$tag-$i.json" 2>&1 >/dev/null | grep -E "prompt .* tokens" | sed "s/^/loratune $tag: /"
  done
  python3 scripts/bench/hf_generate.py --model "$m" ${adapter:+--adapter "$adapter"} --device cuda --dtype bf16 \
    --prompt "$prompt" --max-new-tokens "$n" --repeats 3 --json "$out/transformers-$tag.json" 2>&1 | grep -vi warn | tail -n 2 | sed "s/^/transformers $tag: /"
done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
