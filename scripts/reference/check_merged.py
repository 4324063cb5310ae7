#!/usr/bin/env python3
"""Does transformers load a checkpoint written by `loratune merge`, and does it compute what
PEFT's own merge computes?

    target/release/loratune init-model --preset tiny --out /tmp/tiny
    target/release/loratune merge --model /tmp/tiny --adapter tests/fixtures/peft_adapter_tiny_rslora \\
        --out /tmp/tiny-merged --dtype f32
    scripts/reference/.venv/bin/python scripts/reference/check_merged.py --merged /tmp/tiny-merged \\
        --base /tmp/tiny --adapter tests/fixtures/peft_adapter_tiny_rslora \\
        --case tests/fixtures/peft_adapter_tiny_rslora/case.json --out tests/fixtures/merged_tiny_rslora.json

--base may also be a GGUF file (dequantized to f32 by transformers); --out is optional.

Float32 on CPU. It:
  1. loads --merged with AutoModelForCausalLM.from_pretrained (loratune's folder as it is);
  2. loads --base, attaches --adapter with PeftModel.from_pretrained and runs PEFT's
     merge_and_unload();
  3. compares the two state dicts (max |difference| over all tensors, per tensor name) and
     the losses of both models on the case's input_ids (labels = input_ids);
  4. writes (--out) the merged folder's safetensors sha256s, both losses, the weight
     difference, versions and this command.
Exit status 1 when a tensor is missing or the losses differ by more than --tol.
"""

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def load_base(path):
    p = Path(path)
    if p.is_file():
        return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)


def loss_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--merged", required=True, help="the folder loratune merge wrote")
    ap.add_argument("--base", required=True, help="the base it was merged from (HF folder or GGUF)")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--case", help="JSON with input_ids (a list of rows); default: 2 seeded rows of 24 ids")
    ap.add_argument("--out")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)

    merged = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32, attn_implementation="eager").eval()
    reference = PeftModel.from_pretrained(load_base(args.base), args.adapter).merge_and_unload().eval()

    ours, theirs = merged.state_dict(), reference.state_dict()
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    if missing or extra:
        print(f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
        sys.exit(1)
    diffs = {k: (ours[k] - theirs[k]).abs().max().item() for k in theirs}
    worst = max(diffs, key=diffs.get)

    if args.case:
        ids = torch.tensor(json.loads(Path(args.case).read_text())["input_ids"])
    else:
        ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    merged_loss, peft_loss = loss_of(merged, ids), loss_of(reference, ids)

    shards = sorted(Path(args.merged).glob("*.safetensors"))
    record = {
        "merged_files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards},
        "transformers_loss_of_merged": merged_loss,
        "peft_merge_and_unload_loss": peft_loss,
        "max_abs_weight_diff": diffs[worst],
        "worst_tensor": worst,
        "input_ids": ids.tolist(),
        "versions": {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
    }
    print(f"loaded {args.merged} in transformers: loss {merged_loss:.7f}; PEFT merge_and_unload: {peft_loss:.7f}")
    print(f"max |weight difference| {diffs[worst]:.3e} ({worst}), over {len(diffs)} tensors")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    if abs(merged_loss - peft_loss) > args.tol * max(1.0, abs(peft_loss)):
        print("FAIL: the losses differ")
        sys.exit(1)


if __name__ == "__main__":
    main()
