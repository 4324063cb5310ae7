"""Whether two run folders hold the same training, bit for bit: every step's loss, grad norm
and eval loss in metrics.jsonl, and the bytes of the adapter, the best adapter, eval.json,
samples.jsonl, lint.json and config.toml. Timings, run.json (times, command line) and the
report are not compared. Exit status 1 when anything differs.

The proof a restructuring owes (behaviour unchanged): run the main job with the build before
and after the change, then

    python3 scripts/same-run.py BEFORE/runs/smollm2-calendar AFTER/runs/smollm2-calendar
"""
import hashlib, json, os, sys


def steps(run):
    out = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        r = json.loads(line)
        out[r["step"]] = (r.get("loss"), r.get("grad_norm"), r.get("eval_loss"))
    return out


def digest(path):
    if not os.path.exists(path):
        return None
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


a, b = sys.argv[1], sys.argv[2]
same = True
ma, mb = steps(a), steps(b)
differ = [s for s in sorted(set(ma) | set(mb)) if ma.get(s) != mb.get(s)]
print(f"metrics.jsonl: {len(ma)} and {len(mb)} steps; loss, grad_norm and eval_loss differ at {len(differ)} {differ[:5]}")
same &= not differ
for name in ["adapter_model.safetensors", "adapter_config.json", "best/adapter_model.safetensors",
             "eval.json", "samples.jsonl", "lint.json", "config.toml"]:
    da, db = digest(os.path.join(a, name)), digest(os.path.join(b, name))
    verdict = "identical" if da == db else "DIFFERENT"
    print(f"{name}: {verdict} ({(da or 'absent')[:16]} / {(db or 'absent')[:16]})")
    same &= da == db
sys.exit(0 if same else 1)
