"""Pinned host <-> device copy bandwidth on the GPU machine, the ceiling for offloading
checkpoints (train.offload_checkpoints): device-to-host, host-to-device, both at once on two
streams, and device-to-host while a large bf16 matmul runs (does the copy slow compute?).
Timed with CUDA events over 1 GiB copies, median of 5.

    python3 scripts/gpu/host-bandwidth.py
"""
import statistics
import torch

GIB = 1 << 30
dev = torch.empty(GIB, dtype=torch.uint8, device="cuda")
dev2 = torch.empty(GIB, dtype=torch.uint8, device="cuda")
host = torch.empty(GIB, dtype=torch.uint8).pin_memory()
host2 = torch.empty(GIB, dtype=torch.uint8).pin_memory()
s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()


def timed(fn, reps=5):
    out = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out[1:])


def both():
    with torch.cuda.stream(s1):
        host.copy_(dev, non_blocking=True)
    with torch.cuda.stream(s2):
        dev2.copy_(host2, non_blocking=True)
    torch.cuda.current_stream().wait_stream(s1)
    torch.cuda.current_stream().wait_stream(s2)


a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")


def mm(n=20):
    for _ in range(n):
        a @ b


def mm_with_copy():
    with torch.cuda.stream(s1):
        host.copy_(dev, non_blocking=True)
    mm()
    torch.cuda.current_stream().wait_stream(s1)


d2h = timed(lambda: host.copy_(dev, non_blocking=True))
h2d = timed(lambda: dev.copy_(host, non_blocking=True))
bi = timed(both)
t_mm = timed(mm)
t_mmc = timed(mm_with_copy)
flops = 20 * 2 * 8192**3
print(f"pinned D2H {GIB / d2h / 1e9:.1f} GB/s, H2D {GIB / h2d / 1e9:.1f} GB/s, "
      f"both at once {2 * GIB / bi / 1e9:.1f} GB/s in all")
print(f"bf16 8192^3 matmul x20: {flops / t_mm / 1e12:.0f} TFLOP/s alone, "
      f"{flops / t_mmc / 1e12:.0f} TFLOP/s with a 1 GiB D2H copy beside it ({t_mmc * 1e3:.1f} ms vs {t_mm * 1e3:.1f} ms)")
