#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu (scripts/build-cuda.sh) carried:
# loratune's LoRA training step on a Llama-2-7B shape (random weights, `bench --preset`)
# beside transformers + PEFT on the same shape (scripts/gpu/peft_gpu.py), for the
# workloads of the 7B targets, one after the other in this one command. Peak device
# memory for both comes from sampling nvidia-smi every 50 ms (CUDA context included);
# PEFT also reports torch's own peaks. Results: JSON and logs under ${OUT:-/tmp/loratune-bench-7b};
# a comparison table is printed last.
# Usage: scripts/gpu/bench-7b.sh ["SEQ BATCH GC" ...]   (GC: 0 or 1 for gradient checkpointing)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/loratune-bench-7b}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=("1024 1 0" "1024 4 0" "4096 1 1")

# Runs "$@" while sampling the GPU's used memory; writes the peak MiB to $peak_file.
with_peak() {
  local samples; samples=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$samples" &
  local smi=$!
  "$@"; local rc=$?
  kill $smi; wait $smi 2>/dev/null
  sort -n "$samples" | tail -n 1 > "$peak_file"
  rm -f "$samples"
  return $rc
}

for w in "${workloads[@]}"; do
  set -- $w; seq=$1; batch=$2; gc=$3
  tag="s${seq}-b${batch}-gc${gc}"
  gcflag=(); [ "$gc" = 1 ] && gcflag=(--gradient-checkpointing)
  echo "== $tag: loratune"
  peak_file="$out/$tag-loratune.peak"
  with_peak timeout 300 "$lt" bench --preset llama2-7b --device cuda --seq-len "$seq" --batch-size "$batch" \
    --warmup 2 --steps 10 "${gcflag[@]}" --json "$out/$tag-loratune.json" > "$out/$tag-loratune.log" 2>&1 \
    || echo "loratune failed (exit $?): $(tail -n 3 "$out/$tag-loratune.log")"
  grep -E "step  |throughput|error" "$out/$tag-loratune.log" | tail -n 4
  echo "== $tag: peft"
  peak_file="$out/$tag-peft.peak"
  with_peak timeout 300 python3 scripts/gpu/peft_gpu.py --seq-len "$seq" --batch-size "$batch" "${gcflag[@]}" \
    > "$out/$tag-peft.log" 2>&1 || echo "peft failed (exit $?): $(tail -n 3 "$out/$tag-peft.log")"
  tail -n 1 "$out/$tag-peft.log" | grep '^{' > "$out/$tag-peft.json" || true
done

python3 - "$out" "${workloads[@]}" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
def peak(p):
    try:
        return int(open(p).read().strip()) / 1024
    except Exception:
        return None
print(f"\n{'workload':<18}{'loratune tok/s':>15}{'smi peak':>9}{'pool peak':>10}{'MFU':>6}"
      f"{'PEFT tok/s':>12}{'smi peak':>9}{'torch rsv':>10}{'ratio':>7}")
for w in sys.argv[2:]:
    seq, batch, gc = w.split()
    tag = f"s{seq}-b{batch}-gc{gc}"
    lt, pf = load(f"{out}/{tag}-loratune.json"), load(f"{out}/{tag}-peft.json")
    ours = lt["ours"] if lt else {}
    lt_tps = ours.get("tokens_per_s")
    pf_tps = pf["tokens_per_s"] if pf else None
    dev = ours.get("peak_device")
    pool = (dev["reserved"] + dev["baseline"]) / 2**30 if dev else None
    mfu = 100 * ours["mfu"] if ours.get("mfu") else None
    f = lambda x, d=0: "-" if x is None else f"{x:.{d}f}"
    ratio = lt_tps / pf_tps if lt_tps and pf_tps else None
    name = f"seq {seq} x {batch}{' gc' if gc == '1' else ''}"
    print(f"{name:<18}{f(lt_tps):>15}{f(peak(f'{out}/{tag}-loratune.peak'), 1):>9}{f(pool, 1):>10}{f(mfu, 1):>6}"
          f"{f(pf_tps):>12}{f(peak(f'{out}/{tag}-peft.peak'), 1):>9}{f(pf and pf['max_memory_reserved_gib'], 1):>10}{f(ratio, 2):>7}")
print("GiB. smi peak: nvidia-smi sampled every 50 ms (CUDA context included); pool peak: loratune's memory pool"
      " high-water mark plus the context; torch rsv: torch.cuda.max_memory_reserved; MFU against bf16 matmul measured by bench.")
PY
