#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu carried and SmolLM2's GGUF at
# models/smollm2/: the issue's correctness check at full size. The main job's config on
# CUDA for a few steps, once with the file's Q4_1 blocks kept in memory
# (model.quantize=gguf, expanded to bf16 by the kernels) and once dequantized at load to
# bf16: base eval loss and every step's loss, side by side (scripts/compare-runs.py).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-qlora-smollm2}"
mkdir -p "$out"
for q in dense gguf; do
  extra=(); [ "$q" = gguf ] && extra=(--set model.quantize=gguf)
  rm -rf "runs/smollm2-qlora-$q"
  $lt train configs/smollm2-135m-cpu.toml --set device.name=cuda --set output.dir="runs/smollm2-qlora-$q" \
    --set train.max_steps=20 --set eval.every=10 "${extra[@]}" 2>&1 | grep -E "^(model|eval|base|done)|error" | sed "s/^/$q: /"
  cp "runs/smollm2-qlora-$q/metrics.jsonl" "$out/metrics-$q.jsonl"
done
python3 scripts/compare-runs.py "$out/metrics-dense.jsonl" "$out/metrics-gguf.jsonl" | tail -n 12
