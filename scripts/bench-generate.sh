#!/usr/bin/env bash
# Generation speed on this machine's CPU: SmolLM2-135M-Instruct (the Q4_1 GGUF, f32 compute),
# loratune generate beside transformers' generate on the same prompt, greedy, N new tokens
# (EOS ignored), one sequence, both on $THREADS threads. Needs the reference venv
# (scripts/reference/setup-venv.sh) and target/release/loratune.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${NEW_TOKENS:-128}"
threads="${THREADS:-$(nproc)}"
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
prompt="Write a short story about a lighthouse keeper who finds a message in a bottle."
out="${OUT:-target/bench-generate}"
mkdir -p "$out"
for i in 1 2 3; do
  RAYON_NUM_THREADS="$threads" target/release/loratune generate --model "$gguf" --device cpu --prompt "$prompt" \
    --max-new-tokens "$n" --ignore-eos --json "$out/loratune-$i.json" 2>&1 >/dev/null | grep -E "prompt .* tokens" | sed 's/^/loratune: /'
done
scripts/reference/.venv/bin/python scripts/bench/hf_generate.py --gguf "$gguf" --device cpu --dtype f32 --threads "$threads" \
  --prompt "$prompt" --max-new-tokens "$n" --repeats 3 --json "$out/transformers.json" 2>&1 | grep "transformers generate"
