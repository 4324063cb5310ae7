#!/usr/bin/env bash
# `loratune data lint` on 100k synthetic conversations (plus a 2k eval file), release build,
# on $THREADS threads (default 2, the target machine): without --model, then with the
# SmolLM2 tokenizer counting every example's tokens as training would. Prints the wall time
# of each and what the lint found beside what was planted.
# Needs: target/release/loratune (cargo build --release --locked; BIN=path picks another
# build); for the --model run,
# scripts/fetch-test-model.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${N:-100000}"
threads="${THREADS:-2}"
out="${OUT:-target/bench-lint}"
bin="${BIN:-target/release/loratune}"
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$bin" ] || { echo "build first: cargo build --release --locked" >&2; exit 2; }
[ -f "$out/train.jsonl" ] && [ "$(wc -l < "$out/train.jsonl")" -eq "$n" ] || python3 scripts/bench/make_lint_data.py "$out" --n "$n"
echo "data: $(wc -l < "$out/train.jsonl") train lines ($(du -h "$out/train.jsonl" | cut -f1)), planted $(cat "$out/planted.json")"
run() {
  local label="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  RAYON_NUM_THREADS="$threads" "$bin" data lint "$out/train.jsonl" --eval "$out/eval.jsonl" "$@" --json "$out/report-$label.json" > "$out/stdout-$label.txt" || true
  t1=$(date +%s.%N)
  python3 - "$out/report-$label.json" "$label" "$(echo "$t1 - $t0" | bc)" "$threads" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]
print(f"lint {sys.argv[2]}: {s['examples']} examples in {float(sys.argv[3]):.1f} s on {sys.argv[4]} threads; "
      f"found {s['exact_duplicate_lines']} exact + {s['near_duplicate_lines']} near duplicate lines, "
      f"leakage {s['leakage_exact']} exact + {s['leakage_near']} near, truncated {s['truncated']}")
PY
}
run no-model
if [ -f "$gguf" ]; then
  run with-model --model "$gguf" --max-seq-len 1024
else
  echo "skipping the --model run: $gguf is missing (scripts/fetch-test-model.sh)"
fi
