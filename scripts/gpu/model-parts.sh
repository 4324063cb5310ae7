#!/usr/bin/env bash
# SmolLM2's GGUF (94 MB) and dist/gpu do not fit in one device call's 64 MiB, so the model
# travels in two parts over two back-to-back calls to the same warm machine.
#   here:             scripts/gpu/model-parts.sh split      (writes .mdl/a/part, .mdl/b/part, .mdl/b/sha;
#                                                            add /.mdl/ to .git/info/exclude)
#   call 1 (carry dist/gpu, .mdl/a):  scripts/gpu/model-parts.sh stash    (keeps part a in /tmp)
#   call 2 (carry .mdl/b), at once:   scripts/gpu/model-parts.sh join     (models/smollm2/..., checked)
# dist/cuda/loratune, unpacked by lib.sh in call 1, is kept in /tmp too for call 2.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
case "${1:-}" in
  split)
    mkdir -p .mdl/a .mdl/b
    head -c 42000000 "$gguf" > .mdl/a/part
    tail -c +42000001 "$gguf" > .mdl/b/part
    sha256sum "$gguf" | cut -c1-64 > .mdl/b/sha ;;
  stash)
    source scripts/gpu/lib.sh
    mkdir -p /tmp/model-parts && cp .mdl/a/part /tmp/model-parts/a && cp "$lt" /tmp/model-parts/loratune ;;
  join)
    [ -e /tmp/model-parts/a ] || { echo "part a is not here: the machine was not the warm one of call 1" >&2; exit 3; }
    mkdir -p models/smollm2 dist/cuda
    cat /tmp/model-parts/a .mdl/b/part > "$gguf.part"
    echo "$(cat .mdl/b/sha)  $gguf.part" | sha256sum -c --quiet
    mv "$gguf.part" "$gguf"
    [ -x dist/cuda/loratune ] || cp /tmp/model-parts/loratune dist/cuda/loratune ;;
  *) echo "usage: $0 split|stash|join" >&2; exit 2 ;;
esac
