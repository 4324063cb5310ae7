"""Compares two loratune runs step by step: the training loss of every logged step and the
eval losses, as relative differences. Used to check a CUDA bf16 run against the CPU f32
run of the same config (scripts/gpu/smollm2-cuda.sh).

    python3 scripts/compare-runs.py runs/smollm2-calendar/metrics.jsonl OTHER/metrics.jsonl
"""
import json, sys

def read(path):
    train, evals = {}, {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r:
            train[r["step"]] = r["loss"]
        if "eval_loss" in r:
            evals[r["step"]] = r["eval_loss"]
    return train, evals

(ta, ea), (tb, eb) = read(sys.argv[1]), read(sys.argv[2])
worst = {}
for name, a, b in (("train loss", ta, tb), ("eval loss", ea, eb)):
    steps = sorted(set(a) & set(b))
    rel = [abs(b[s] - a[s]) / abs(a[s]) for s in steps]
    for s, r in zip(steps, rel):
        if name == "eval loss" or s in (1, 2, 5, 10, 20, 40, 60) or s == steps[-1]:
            print(f"{name:<10} step {s:>4}: {a[s]:.6f} vs {b[s]:.6f}  rel {r:.2e}")
    worst[name] = max(rel) if rel else float("nan")
    print(f"{name:<10} over {len(steps)} steps: max rel diff {worst[name]:.2e}, mean {sum(rel) / max(len(rel), 1):.2e}")
