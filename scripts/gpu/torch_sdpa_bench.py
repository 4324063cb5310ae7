"""Torch's SDPA backends on the attention job of `loratune bench --attention`: B 1, causal,
bf16, (heads, kv heads, head dim) as given; median forward and backward milliseconds over
CUDA events and TFLOP/s counted as loratune counts them (forward 2*T^2*H*D, backward 2.5x).
Prints one JSON line per backend and length. Run by scripts/gpu/attention-bench.sh."""

import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    lens = [int(x) for x in sys.argv[1].split(",")]
    nh, nkv, d = (int(x) for x in sys.argv[2].split(","))
    torch.manual_seed(0)
    for t in lens:
        q = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, nkv, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, nkv, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dout = torch.randn(1, nh, t, d, device="cuda", dtype=torch.bfloat16)
        flops = 2.0 * t * t * nh * d
        reps = 5 if t >= 16384 else 10
        for name, backend in [("torch-flash", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)]:
            try:
                with sdpa_kernel(backend):
                    gqa = nkv != nh
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
                    o = fwd()
                    fwd_ms = median_ms(lambda: fwd().detach(), 2, reps)
                    bwd_ms = median_ms(lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True), 2, reps)
                print(json.dumps({"engine": name, "t": t, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
                                  "fwd_tflops": flops / fwd_ms / 1e9, "bwd_tflops": 2.5 * flops / bwd_ms / 1e9}))
            except RuntimeError as e:
                print(json.dumps({"engine": name, "t": t, "error": str(e).splitlines()[0]}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
