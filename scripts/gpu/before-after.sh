#!/usr/bin/env bash
# On the GPU machine, from the repo root: proof that a change kept behaviour and speed on
# CUDA. Runs the same jobs with an earlier build (OLD, a loratune.xz from scripts/build-cuda.sh
# at the earlier commit) and with this one (dist/gpu/loratune.xz), alternating:
#   1. the main job's config on CUDA in bf16 for STEPS steps (default 20): every training and
#      eval loss and grad norm compared (scripts/compare-runs.py);
#   2. `bench --preset llama2-7b` at each of WORKLOADS ("SEQ BATCH GC;..."), old, new, old,
#      new, so drift of the card shows as the spread between the two runs of one build.
# Needs SmolLM2's GGUF at models/smollm2/. Usage: scripts/gpu/before-after.sh OLD.xz
set -euo pipefail
source "$(dirname "$0")/lib.sh"
old_xz=$1
out="${OUT:-/tmp/loratune-before-after}"
mkdir -p "$out" dist/old
old=dist/old/loratune
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$old_xz" "$old"
chmod +x "$old"
steps="${STEPS:-20}"
for who in old new; do
  bin=$lt; [ "$who" = old ] && bin=$old
  rm -rf "runs/ba-$who"
  "$bin" train configs/smollm2-135m-cpu.toml --set device.name=cuda --set output.dir="runs/ba-$who" \
    --set train.max_steps="$steps" --set eval.every=10 > "$out/train-$who.log" 2>&1 || { tail -n 5 "$out/train-$who.log"; exit 1; }
  grep -E "^eval|^done" "$out/train-$who.log"
  cp "runs/ba-$who/metrics.jsonl" "$out/metrics-$who.jsonl"
done
python3 scripts/compare-runs.py "$out/metrics-old.jsonl" "$out/metrics-new.jsonl" | tail -n 6

IFS=';' read -ra workloads <<< "${WORKLOADS:-1024 1 0;1024 4 0}"
for w in "${workloads[@]}"; do
  set -- $w; seq=$1; batch=$2; gc=$3
  gcflag=(); [ "$gc" = 1 ] && gcflag=(--gradient-checkpointing)
  for who in old new old new; do
    bin=$lt; [ "$who" = old ] && bin=$old
    "$bin" bench --preset llama2-7b --device cuda --seq-len "$seq" --batch-size "$batch" --warmup 2 --steps 10 \
      "${gcflag[@]}" > "$out/bench-$seq-$batch-$gc-$who.log" 2>&1 || true
    printf '%-4s %5s x %s gc%s  ' "$who" "$seq" "$batch" "$gc"
    grep -E "^throughput|^device mem|^loss " "$out/bench-$seq-$batch-$gc-$who.log" | tr '\n' ' '
    echo
  done
done
