#!/usr/bin/env bash
# On the GPU machine, with dist/gpu and the peers' folder (../shared/peers copied to .peers,
# its wheelhouse built; see docs/BENCHMARKS.md) carried: `loratune bench --preset llama2-7b`
# and the peers on exactly that job, from this one command, then one table of tokens/s and
# memory. Memory is compared as the issue asks: loratune's pool peak plus the CUDA context
# it found in use at open, against the peer's torch max reserved plus 0.5 GiB of context.
# Usage: scripts/gpu/vs-peers.sh "SEQ BATCH CKPT[ QUANT];..." ["unsloth liger ..."]
#   QUANT (optional): q4_k for loratune, and the peers run their 4-bit mode (unsloth4bit).
# Env: PEERS_DIR (default .peers), LT_STEPS (default 6), PEER_DEADLINE_S (peers' share).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
out="${OUT:-/tmp/vs-peers}"
mkdir -p "$out"
workloads="$1"
modes="${2:-unsloth}"
peers="${PEERS_DIR:-.peers}"
IFS=';' read -ra WL <<<"$workloads"
for w in "${WL[@]}"; do
  read -r seq batch ck quant <<<"$w"
  tag="s${seq}-b${batch}-c${ck}-${quant:-bf16}"
  flags=(--preset llama2-7b --device cuda --seq-len "$seq" --batch-size "$batch" --warmup 2 --steps "${LT_STEPS:-6}")
  [ "$ck" = 1 ] && flags+=(--gradient-checkpointing)
  [ -n "${quant:-}" ] && flags+=(--quantize "$quant")
  timeout 150 "$lt" bench "${flags[@]}" --json "$out/$tag.json" > "$out/$tag.log" 2>&1 \
    || echo "loratune $tag failed: $(tail -n 2 "$out/$tag.log")"
done
# The peers, on the same workloads (4-bit workloads in their 4-bit mode only).
plain=(); q4=()
for w in "${WL[@]}"; do
  read -r seq batch ck quant <<<"$w"
  if [ -n "${quant:-}" ]; then q4+=("$seq $batch $ck"); else plain+=("$seq $batch $ck"); fi
done
export OUT="$out/peers"
join() { local IFS=';'; echo "$*"; }
[ ${#plain[@]} -gt 0 ] && bash "$peers/peer_gpu.sh" "$modes" "$(join "${plain[@]}")" > /dev/null 2>&1
[ ${#q4[@]} -gt 0 ] && PEER_SKIP_IMPORT_CHECK=1 bash "$peers/peer_gpu.sh" "unsloth4bit" "$(join "${q4[@]}")" > /dev/null 2>&1
python3 - "$out" "$workloads" <<'PY'
import json, os, sys
out, workloads = sys.argv[1], sys.argv[2]
peers = []
if os.path.exists(f"{out}/peers/peer.jsonl"):
    peers = [json.loads(l) for l in open(f"{out}/peers/peer.jsonl") if l.strip().startswith("{")]
print(f"{'workload':<22}{'loratune tok/s':>15}{'GiB':>7}   {'peer':<12}{'tok/s':>9}{'GiB':>7}{'ratio':>7}")
for w in workloads.split(";"):
    parts = w.split()
    seq, batch, ck = (int(x) for x in parts[:3]); quant = parts[3] if len(parts) > 3 else None
    tag = f"s{seq}-b{batch}-c{ck}-{quant or 'bf16'}"
    try:
        ours = json.load(open(f"{out}/{tag}.json"))["ours"]
        tps = ours["tokens_per_s"]; dev = ours["peak_device"]
        gib = (dev["reserved"] + dev["baseline"]) / 2**30
    except Exception:
        tps = gib = None
    name = f"{seq} x {batch}{' ckpt' if ck else ''}{' ' + quant if quant else ''}"
    rows = [p for p in peers if p.get("seq_len") == seq and p.get("batch_size") == batch
            and bool(p.get("gradient_checkpointing")) == bool(ck) and (p.get("mode") == "unsloth4bit") == bool(quant)]
    f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
    for i, p in enumerate(rows or [{}]):
        ptps = p.get("tokens_per_s"); pres = p.get("peak_reserved_gib")
        pgib = pres + 0.5 if pres is not None else None
        ratio = tps / ptps if tps and ptps else None
        left = f"{name:<22}{f(tps):>15}{f(gib, 2):>7}" if i == 0 else " " * 44
        print(f"{left}   {p.get('mode', '-'):<12}{f(ptps):>9}{f(pgib, 2):>7}{f(ratio, 2):>7}  {(p.get('error') or '')[:60]}")
print("GiB: loratune pool peak + context at open; peers torch max reserved + 0.5 GiB context.")
PY
