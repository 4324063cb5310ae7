#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/gpu carried (scripts/build-cuda.sh
# builds with the nccl feature) and SmolLM2's GGUF at models/smollm2/: data-parallel
# training checked and measured. N = the GPUs to use (default: all the machine has).
#
# With N >= 2:
#   1. correctness: the main job's config on CUDA for 20 steps with --gpus N against one
#      GPU with N times the accumulation (the same global batch): every loss side by side;
#   2. scaling: `bench --preset llama2-7b --seq 1024 --batch 4` on 1 GPU and with --gpus N;
#      efficiency = tokens/s per GPU at N / tokens/s at 1 (targets: >= 0.90 at 2, >= 0.85 at 4);
#   3. the peer: transformers + PEFT, alone and under torchrun with DDP, same job (also
#      with N = 1, where it checks the peer's DDP path).
# Always (so one GPU checks what it can):
#   4. a group of one through NCCL (RANK=0 WORLD_SIZE=1) against a plain run: identical;
#   5. two ranks on GPU 0 through the host collectives (LORATUNE_COLLECTIVES=host) against
#      one process with twice the accumulation: the sharding and summing on CUDA tensors;
#   6. the 7B bench alone and as a group of one through NCCL: the cost of the all-reduce path.
# Usage: scripts/gpu/data-parallel.sh [N]      ONLY="1 2 3 4 5 6" picks parts; MODEL=DIR
# trains another model in parts 1, 4 and 5.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
# NVLink multicast stays off: on a shared host it can put every GPU out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# libnccl.so.2 from the machine's PyTorch.
nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
[ -n "$nccl_lib" ] && export LD_LIBRARY_PATH="$nccl_lib:$LD_LIBRARY_PATH"
n="${1:-$(nvidia-smi -L | wc -l)}"
only="${ONLY:-1 2 3 4 5 6}"
want() { [[ " $only " == *" $1 "* ]]; }
out="${OUT:-/tmp/loratune-dp}"
mkdir -p "$out"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
echo "GPUs used: $n; NCCL from ${nccl_lib:-the loader path}"

cfg=configs/smollm2-135m-cpu.toml
short=(--set device.name=cuda --set train.max_steps=20 --set eval.every=10 --set eval.generate_examples=0 --set output.checkpoint_every=10)
# MODEL=DIR runs the train checks on another model (e.g. `loratune init-model --preset tiny`).
[ -n "${MODEL:-}" ] && short+=(--set model.path="$MODEL")
train() { # tag, extra args...
  local tag=$1; shift
  rm -rf "runs/dp-$tag"
  "$@" --set output.dir="runs/dp-$tag" > "$out/train-$tag.log" 2>&1
  local rc=$?
  grep -E "^(ranks|eval|done)|error|rank [0-9]+ failed" "$out/train-$tag.log" | sed "s/^/$tag: /"
  cp "runs/dp-$tag/metrics.jsonl" "$out/metrics-$tag.jsonl" 2>/dev/null
  return $rc
}
bench() { # tag, extra args...
  local tag=$1; shift
  "$@" --preset llama2-7b --device cuda --seq-len 1024 --batch-size 4 --warmup 2 --steps 10 --json "$out/bench-$tag.json" > "$out/bench-$tag.log" 2>&1 \
    || echo "$tag failed: $(tail -n 3 "$out/bench-$tag.log")"
  grep -E "^(throughput|ranks|device mem)" "$out/bench-$tag.log" | sed "s/^/$tag: /"
}

if [ "$n" -ge 2 ] && want 1; then
    echo "== 1. correctness: --gpus $n vs one GPU with grad_accum $n"
    train one $lt train $cfg "${short[@]}" --set train.grad_accum="$n"
    train "n$n" $lt train $cfg "${short[@]}" --gpus "$n"
    python3 scripts/compare-runs.py "$out/metrics-one.jsonl" "$out/metrics-n$n.jsonl" | tail -n 8
fi
if [ "$n" -ge 2 ] && want 2; then
    echo "== 2. scaling, Llama-2-7B shape, seq 1024 x 4 per GPU"
    bench g1 $lt bench
    bench "g$n" $lt bench --gpus "$n"
fi
if want 3; then
  # With N = 1 this checks the DDP path of the peer script on one GPU.
  echo "== 3. PEFT, same job, alone and with DDP on $n GPU(s)"
  timeout 300 python3 scripts/gpu/peft_gpu.py --seq-len 1024 --batch-size 4 > "$out/peft-g1.log" 2>&1
  tail -n 1 "$out/peft-g1.log" > "$out/peft-g1.json"
  timeout 300 torchrun --standalone --nproc-per-node "$n" scripts/gpu/peft_gpu.py --seq-len 1024 --batch-size 4 > "$out/peft-ddp$n.log" 2>&1 \
    || echo "torchrun failed: $(tail -n 5 "$out/peft-ddp$n.log")"
  grep '^{' "$out/peft-ddp$n.log" | tail -n 1 > "$out/peft-ddp$n.json"
fi
if want 4; then
  echo "== 4. a group of one through NCCL vs a plain run"
  train plain $lt train $cfg "${short[@]}"
  RANK=0 WORLD_SIZE=1 MASTER_PORT=29511 train nccl1 $lt train $cfg "${short[@]}"
  python3 scripts/compare-runs.py "$out/metrics-plain.jsonl" "$out/metrics-nccl1.jsonl" | tail -n 2
fi
if want 5; then
  echo "== 5. two ranks on GPU 0 (host collectives) vs one process with grad_accum 2"
  train accum2 $lt train $cfg "${short[@]}" --set train.grad_accum=2
  rm -rf runs/dp-host2
  for r in 1 0; do
    LORATUNE_COLLECTIVES=host RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 MASTER_PORT=29512 \
      $lt train $cfg "${short[@]}" --set output.dir=runs/dp-host2 > "$out/train-host2-r$r.log" 2>&1 &
  done
  wait
  grep -E "^(ranks|eval|done)|error" "$out/train-host2-r0.log" | sed "s/^/host2: /"
  grep -E "error" "$out/train-host2-r1.log" | sed "s/^/host2 rank 1: /"
  cp runs/dp-host2/metrics.jsonl "$out/metrics-host2.jsonl"
  python3 scripts/compare-runs.py "$out/metrics-accum2.jsonl" "$out/metrics-host2.jsonl" | tail -n 8
fi
if want 6; then
  echo "== 6. 7B bench alone and as a group of one through NCCL"
  bench plain $lt bench
  RANK=0 WORLD_SIZE=1 MASTER_PORT=29513 bench nccl1 $lt bench
  if [ ! -s "$out/peft-g1.json" ]; then
    timeout 300 python3 scripts/gpu/peft_gpu.py --seq-len 1024 --batch-size 4 > "$out/peft-g1.log" 2>&1
    tail -n 1 "$out/peft-g1.log" > "$out/peft-g1.json"
  fi
fi

python3 - "$out" "$n" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except Exception:
        return None
def ours(tag):
    j = load(f"bench-{tag}")
    return j and j["ours"]
print("\nLlama-2-7B shape, seq 1024 x 4 per GPU, r16 q/k/v/o, bf16 (tokens/s per GPU)")
one, plain, nccl1 = ours("g1"), ours("plain"), ours("nccl1")
base = one or plain
p1, pn = load("peft-g1"), load(f"peft-ddp{n}")
if base:
    print(f"  loratune 1 GPU: {base['tokens_per_s']:.0f}" + (f"   PEFT 1 GPU: {p1['tokens_per_s']:.0f} (ratio {base['tokens_per_s'] / p1['tokens_per_s']:.2f})" if p1 else ""))
if nccl1:
    r = nccl1["ranks"]
    print(f"  loratune group of one through NCCL: {nccl1['tokens_per_s']:.0f} ({nccl1['tokens_per_s'] / base['tokens_per_s']:.3f} of plain); "
          f"all-reduce path {1e3 * r['all_reduce_s_median']:.2f} ms of a {1e3 * nccl1['step_s_median']:.0f} ms step ({r['all_reduce_bytes'] / 2**20:.0f} MiB)")
if pn and p1:
    print(f"  PEFT + DDP on {pn['world_size']} GPU(s): {pn['tokens_per_s']:.0f} per GPU ({pn['tokens_per_s'] / p1['tokens_per_s']:.3f} of PEFT alone)")
many = ours(f"g{n}") if n > 1 else None
if many and base:
    r = many["ranks"]
    eff = many["tokens_per_s"] / base["tokens_per_s"]
    print(f"  loratune {n} GPUs: {many['tokens_per_s']:.0f} per GPU, {r['tokens_per_s_all_ranks']:.0f} in all; scaling efficiency {eff:.3f}; "
          f"all-reduce {1e3 * r['all_reduce_s_median']:.2f} ms of a {1e3 * many['step_s_median']:.0f} ms step")
    if pn:
        print(f"  loratune / PEFT + DDP at {n} GPUs, per GPU: {many['tokens_per_s'] / pn['tokens_per_s']:.2f}")
PY
