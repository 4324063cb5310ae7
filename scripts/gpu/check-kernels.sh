#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu (scripts/build-cuda.sh) carried:
# runs tests/cuda_kernels.rs (the CUDA kernels and the bf16 step against the f32 reference
# on the same GPU), printing every error figure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t=dist/cuda/cuda_kernels
if [ ! -x "$t" ]; then
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" dist/gpu/cuda_kernels.xz "$t"
  chmod +x "$t"
fi
"$t" --nocapture --test-threads=1 "$@"
