#!/usr/bin/env bash
# Create scripts/reference/.venv (git-ignored) with the pinned reference stack from
# requirements.txt. Idempotent: does nothing when the venv already matches requirements.txt.
# Usage: scripts/reference/setup-venv.sh        (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "reference venv up to date: $venv"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$req"
"$venv/bin/python" - <<'PY'
import torch, transformers, tokenizers, gguf, numpy, safetensors, accelerate
print("reference venv ready: torch", torch.__version__, "transformers", transformers.__version__)
PY
echo "$want" > "$stamp"
