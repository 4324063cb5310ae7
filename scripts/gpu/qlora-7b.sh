#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu carried: QLoRA on the Llama-2-7B
# shape (random weights drawn on the GPU, projections then quantized on the CPU cores),
# seq 1024 x 1, r16 on q/k/v/o, beside the bf16 LoRA step in the same command. Each run is
# a fresh process, so each peak is its own. Figures go to ${OUT:-/tmp/loratune-qlora}.
# ONLY="bf16 q4_k-ckpt8" runs just the named runs (the targets' pair fits one short call).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-qlora}"
mkdir -p "$out"
common=(--preset llama2-7b --device cuda --seq-len 1024 --batch-size 1 --warmup 3 --steps 10)
run() {
  local tag=$1; shift
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $tag "* ]] && return 0
  $lt bench "${common[@]}" "$@" --json "$out/$tag.json" 2>&1 | grep -E "^(base|step|throughput|device mem|compute)" | sed "s/^/$tag: /"
}
run bf16
run q4_k --quantize q4_k
run q4_k-ckpt8 --quantize q4_k --checkpoint-layers 8
run q4_k-ckpt16 --quantize q4_k --checkpoint-layers 16
run q4_k-gc --quantize q4_k --gradient-checkpointing
run q4_0 --quantize q4_0
run q8_0-ckpt16 --quantize q8_0 --checkpoint-layers 16
