#!/usr/bin/env bash
# Build `loratune --features cuda` on a machine with no GPU and no CUDA toolkit, from
# PyPI's CUDA 13.0 wheels (the GPU machine's driver takes PTX from CUDA <= 13.0).
# Output: dist/cuda/loratune and its xz copy dist/gpu/loratune.xz (git-ignored), for the GPU machine.
# The toolkit pieces go to target/cuda-toolkit (about 1.2 GB, fetched once).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tk="$root/target/cuda-toolkit"
cuda="$tk/root"

if [ ! -x "$cuda/bin/nvcc" ] || [ ! -e "$cuda/lib64/libcuda.so" ]; then
  rm -rf "$tk"
  python3 -m pip install --quiet --no-deps --target "$tk/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
  cu="$tk/wheels/nvidia/cu13"
  mkdir -p "$cuda/lib64"
  for d in bin include nvvm; do ln -sfn "$cu/$d" "$cuda/$d"; done
  # The wheels carry only versioned sonames; the linker wants the plain names too.
  for lib in "$cu"/lib/*.so*; do
    name="$(basename "$lib")"
    ln -sfn "$lib" "$cuda/lib64/$name"
    ln -sfn "$lib" "$cuda/lib64/${name%%.so*}.so"
  done
  # libcuda is the driver, in no wheel: link against a stub defining every cu* symbol
  # cudarc's driver bindings declare; the GPU machine's real libcuda.so.1 is used at run time.
  cargo fetch --quiet
  sys="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys | sort -V | tail -n 1)"
  grep -rhoE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$tk/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib64/libcuda.so" "$tk/libcuda_stub.c"
  ln -sfn libcuda.so "$cuda/lib64/libcuda.so.1"
fi

# NCCL for data-parallel training (feature nccl): linked against PyPI's library; at run
# time the GPU machine's own libnccl.so.2 (PyTorch's) is used (scripts/gpu/lib.sh).
if [ ! -e "$cuda/lib64/libnccl.so" ]; then
  python3 -m pip install --quiet --no-deps --target "$tk/nccl" nvidia-nccl-cu13==2.28.9
  for lib in "$tk"/nccl/nvidia/nccl/lib/libnccl.so*; do
    ln -sfn "$lib" "$cuda/lib64/$(basename "$lib")"
  done
  ln -sfn "$cuda/lib64/libnccl.so.2" "$cuda/lib64/libnccl.so"
fi

# cuDNN's headers and its header-only C++ frontend, for the fused-attention shim
# (src/kernels/cudnn/sdpa.cpp). Only headers are used: cuDNN itself is loaded at run time,
# from the GPU machine's own install (PyTorch's nvidia-cudnn-cu13), so 9.19 headers serve
# any cuDNN 9 there.
cudnn_dir="$tk/cudnn"
if [ ! -e "$cudnn_dir/include/cudnn.h" ] || [ ! -e "$cudnn_dir/frontend/include/cudnn_frontend.h" ]; then
  rm -rf "$cudnn_dir" && mkdir -p "$cudnn_dir/wheels"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$cudnn_dir/wheels" \
    nvidia-cudnn-cu13==9.19.0.56 nvidia-cudnn-frontend==1.32.0
  unzip -q -o "$cudnn_dir"/wheels/nvidia_cudnn_cu13-*.whl 'nvidia/cudnn/include/*' -d "$cudnn_dir/x"
  mv "$cudnn_dir/x/nvidia/cudnn/include" "$cudnn_dir/include"
  unzip -q -o "$cudnn_dir"/wheels/nvidia_cudnn_frontend-*.whl 'include/*' -d "$cudnn_dir/frontend"
  rm -rf "$cudnn_dir/wheels" "$cudnn_dir/x"
fi
export CUDNN_INCLUDE_DIR="$cudnn_dir/include" CUDNN_FRONTEND_INCLUDE_DIR="$cudnn_dir/frontend/include"

export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
export PATH="$cuda/bin:$PATH" LD_LIBRARY_PATH="$cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cargo build --release --locked --features cuda,nccl --target-dir target/cuda --bin loratune
mkdir -p dist/cuda
cp target/cuda/release/loratune dist/cuda/loratune
strip dist/cuda/loratune
# A compressed copy travels to the GPU machine in a fraction of the size.
mkdir -p dist/gpu
xz -T0 -6 -c dist/cuda/loratune > dist/gpu/loratune.xz
# The GPU tests (tests/cuda_kernels.rs) as one executable, built on the same dependencies.
test_bin=$(cargo test --release --locked --features cuda,nccl --target-dir target/cuda --test cuda_kernels --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_kernels":
        print(m["executable"])')
cp "$test_bin" dist/cuda/cuda_kernels
strip dist/cuda/cuda_kernels
xz -T0 -6 -c dist/cuda/cuda_kernels > dist/gpu/cuda_kernels.xz
echo "built dist/cuda/loratune ($(du -h dist/cuda/loratune | cut -f1)); on the GPU machine:"
echo "  carry dist/gpu; scripts/gpu/*.sh unpack dist/gpu/loratune.xz to dist/cuda/loratune"
