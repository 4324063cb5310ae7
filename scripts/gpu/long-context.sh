#!/usr/bin/env bash
# On the GPU machine, with dist/gpu carried: long-context training on the llama3-8b preset with
# 4-bit (q4_k) projections and gradient checkpointing (inputs offloaded to pinned host memory):
# one step at each length (`bench --warmup 0 --steps 1`, so a first step: cuDNN graphs built
# and host buffers pinned inside it), with its time, device memory peak and host memory.
# Usage: scripts/gpu/long-context.sh [LENGTHS]   (default 65536,262144)
# Env: LC_TIMEOUT_S (default 400) per length. Files: $OUT (default /tmp/long-context).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/long-context}"
mkdir -p "$out"
IFS=, read -ra lens <<<"${1:-65536,262144}"
for t in "${lens[@]}"; do
  free -g | awk 'NR==2 {print "host memory before: " $2 " GiB total, " $7 " GiB available"}'
  timeout "${LC_TIMEOUT_S:-400}" "$lt" bench --preset llama3-8b --quantize q4_k --device cuda --seq-len "$t" \
    --batch-size 1 --gradient-checkpointing --warmup 0 --steps 1 --json "$out/8b-q4k-$t.json" > "$out/8b-q4k-$t.log" 2>&1
  echo "== llama3-8b q4_k, seq $t: exit $?"
  grep -E "checkpoints:|step  |device mem|^memory|error" "$out/8b-q4k-$t.log"
done
