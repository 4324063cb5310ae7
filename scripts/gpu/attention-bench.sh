#!/usr/bin/env bash
# On the GPU machine, with dist/gpu carried: attention alone, forward and backward TFLOP/s,
# ours (flash kernels, cuDNN through src/kernels/cudnn.rs) beside torch's SDPA backends
# (FlashAttention-2, cuDNN) from the same command. Usage:
#   scripts/gpu/attention-bench.sh [LENGTHS] [NH,NKV,D]     (default 4096,8192,32768 and 32,32,128)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lens="${1:-4096,8192,32768}"
heads="${2:-32,32,128}"
out="${OUT:-/tmp}"
"$lt" bench --device cuda --attention "$lens" --attention-heads "$heads" --json "$out/attention-ours.json"
python3 "$(dirname "$0")/torch_sdpa_bench.py" "$lens" "$heads" | tee "$out/attention-torch.jsonl"
python3 - "$out/attention-ours.json" "$out/attention-torch.jsonl" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1])) + [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
print(f"{'T':>7} {'engine':>12} {'fwd TF/s':>9} {'bwd TF/s':>9}")
for r in sorted(rows, key=lambda r: (r["t"], r["engine"])):
    if "error" in r:
        print(f"{r['t']:>7} {r['engine']:>12}  error: {r['error']}")
    else:
        print(f"{r['t']:>7} {r['engine']:>12} {r['fwd_tflops']:>9.0f} {r['bwd_tflops']:>9.0f}")
PY
