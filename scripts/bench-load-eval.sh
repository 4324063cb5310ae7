#!/usr/bin/env bash
# Load SmolLM2-135M (GGUF) and evaluate 100 conversations on CPU, with loratune and with
# transformers in the same run; prints both and the ratios.
# Needs: scripts/fetch-test-model.sh; for the transformers side, scripts/reference/setup-venv.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-test-model.sh >/dev/null
ours="$(cargo bench --quiet --bench load_eval 2>/dev/null)"
echo "$ours" | grep -v '^{'
py="$root/scripts/reference/.venv/bin/python"
if [ -x "$py" ]; then
  peer="$("$py" scripts/bench/transformers_load_eval.py 2>/dev/null)"
  echo "$peer" | grep -v '^{'
  python3 - "$(echo "$ours" | grep '^{')" "$(echo "$peer" | grep '^{')" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio     load: transformers/loratune = {b['load_s'] / a['load_s']:.1f}x   eval tokens/s: loratune/transformers = {a['tokens_per_s'] / b['tokens_per_s']:.2f}x   loss diff {abs(a['loss'] - b['loss']):.2e}")
PY
else
  echo "(transformers side skipped: run scripts/reference/setup-venv.sh to compare)"
fi
