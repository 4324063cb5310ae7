# Sourced by the scripts in scripts/gpu/ on the GPU machine: the driver's libraries on the
# loader path, and dist/cuda/loratune unpacked from the carried dist/gpu/loratune.xz.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
lt=dist/cuda/loratune
if [ ! -x "$lt" ]; then
  mkdir -p dist/cuda
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" dist/gpu/loratune.xz "$lt"
  chmod +x "$lt"
fi
# cuDNN 9 for the fused attention (src/kernels/cudnn.rs loads libcudnn.so.9 at run time):
# PyTorch's own copy (pip's nvidia-cudnn-cu13), when there is one.
cudnn_lib=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -n "$cudnn_lib" ] && [ -e "$cudnn_lib/libcudnn.so.9" ]; then
  export LD_LIBRARY_PATH="$cudnn_lib:$LD_LIBRARY_PATH"
fi
