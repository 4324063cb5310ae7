#!/usr/bin/env bash
# On the GPU machine, from the repo root: proof that a change kept behaviour and speed on
# CUDA. Runs the same jobs with an earlier build (OLD, a loratune.xz from scripts/build-cuda.sh
# at the earlier commit) and with this one (dist/gpu/loratune.xz):
#   1. `bench --preset llama2-7b` at each of WORKLOADS ("SEQ BATCH GC;..."), old, new, old,
#      new, so drift of the card shows as the spread between the two runs of one build; the
#      per-step losses of old and new are compared exactly (bench's job is seeded);
#   2. when SmolLM2's GGUF is at models/smollm2/: the main job's config on CUDA in bf16 for
#      STEPS steps (default 20), every training and eval loss compared (compare-runs.py).
# Usage: scripts/gpu/before-after.sh OLD.xz
set -euo pipefail
source "$(dirname "$0")/lib.sh"
old_xz=$1
out="${OUT:-/tmp/loratune-before-after}"
mkdir -p "$out" dist/old
old=dist/old/loratune
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$old_xz" "$old"
chmod +x "$old"

IFS=';' read -ra workloads <<< "${WORKLOADS:-1024 1 0;1024 4 0}"
for w in "${workloads[@]}"; do
  set -- $w; seq=$1; batch=$2; gc=$3
  gcflag=(); [ "$gc" = 1 ] && gcflag=(--gradient-checkpointing)
  for run in old-1 new-1 old-2 new-2; do
    bin=$lt; [ "${run%-*}" = old ] && bin=$old
    tag="$seq-$batch-gc$gc-$run"
    "$bin" bench --preset llama2-7b --device cuda --seq-len "$seq" --batch-size "$batch" --warmup 2 --steps 10 \
      "${gcflag[@]}" --json "$out/bench-$tag.json" > "$out/bench-$tag.log" 2>&1 || tail -n 3 "$out/bench-$tag.log"
  done
done
python3 - "$out" "${workloads[@]}" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'workload':<16} {'old tok/s (2 runs)':>20} {'new tok/s (2 runs)':>20} {'new/old':>8} {'peak GiB old/new':>17}  losses")
for w in sys.argv[2:]:
    seq, batch, gc = w.split()
    r = {k: json.load(open(f"{out}/bench-{seq}-{batch}-gc{gc}-{k}.json"))["ours"] for k in ("old-1", "new-1", "old-2", "new-2")}
    tps = lambda k: r[k]["tokens_per_s"]
    old, new = (tps("old-1") + tps("old-2")) / 2, (tps("new-1") + tps("new-2")) / 2
    pd = lambda k: r[k].get("peak_device") or {}
    peak = lambda k: (pd(k).get("reserved", 0) + pd(k).get("baseline", 0)) / 2**30
    same = all(r[k]["losses"] == r["old-1"]["losses"] for k in r)
    print(f"{seq}x{batch} gc{gc:<8} {tps('old-1'):>9.0f} {tps('old-2'):>9.0f}  {tps('new-1'):>9.0f} {tps('new-2'):>9.0f}  {new / old:>7.3f} "
          f"{peak('old-1'):>8.2f}/{peak('new-1'):<8.2f} {'identical' if same else 'DIFFER'} ({len(r['old-1']['losses'])} steps)")
PY

gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$gguf" ] || exit 0
steps="${STEPS:-20}"
for who in old new; do
  bin=$lt; [ "$who" = old ] && bin=$old
  rm -rf "runs/ba-$who"
  "$bin" train configs/smollm2-135m-cpu.toml --set device.name=cuda --set output.dir="runs/ba-$who" \
    --set train.max_steps="$steps" --set eval.every=10 > "$out/train-$who.log" 2>&1 || { tail -n 5 "$out/train-$who.log"; exit 1; }
  cp "runs/ba-$who/metrics.jsonl" "$out/metrics-$who.jsonl"
done
python3 scripts/compare-runs.py "$out/metrics-old.jsonl" "$out/metrics-new.jsonl" | tail -n 6
