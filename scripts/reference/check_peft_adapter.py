#!/usr/bin/env python3
"""Check that a LoRA adapter written by loratune loads in PEFT and gives loratune's loss.

    scripts/reference/.venv/bin/python scripts/reference/check_peft_adapter.py \
        --base models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --adapter runs/my-run/adapter \
        --data examples/data/calendar-sample.jsonl \
        --loratune-eval eval.json [--max-seq-len 2048] [--tol 1e-4]

--base: a GGUF file (loaded through transformers' gguf_file=, dequantized to float32) or a
Hugging Face model folder. --adapter: a folder with adapter_model.safetensors and
adapter_config.json. --data: JSONL file(s) of conversations in `messages` format (other formats
are refused). --loratune-eval: the JSON `loratune eval` wrote for the same model + adapter +
data (top-level "loss"; see read_loratune_loss for the shapes accepted).

Steps:
  1. base model in float32 (attn_implementation="eager"), PeftModel.from_pretrained(base, adapter);
     prints PEFT's warnings, the number of LoRA modules attached, and compares the adapter file's
     tensor names with the names PEFT expects for this model: any unexpected or missing LoRA key
     (PeftModel.from_pretrained itself only warns about missing keys and silently ignores
     unexpected ones) or any loaded value that differs from the file is an error.
  2. every record encoded with scripts/reference/make_fixtures.py's chat rules, cut to the first
     --max-seq-len tokens (default: the eval JSON's max_seq_len, else 2048, loratune eval's
     default); loss = sum of target-token NLLs over the whole file(s) / number of target tokens
     (float32 model, log-softmax accumulated in float64), batch size 1; the same with the
     adapter disabled (base loss).
  3. prints PEFT's loss, loratune's, |difference| and the base loss; exit status 1 when the
     difference exceeds --tol (or when the target-token counts differ, if the eval JSON has one).
"""

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import build_chat_case, load_gguf, load_hf_dir  # noqa: E402  (the reference rules)

import peft  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


class CheckFailed(Exception):
    pass


def read_conversations(path):
    """Every non-blank line of a JSONL file as a list of {role, content} messages."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CheckFailed(f"{path}:{n}: not JSON: {e}")
            if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise CheckFailed(
                    f"{path}:{n}: only conversations in `messages` format ({{\"messages\": [{{role, content}}]}}) "
                    f"are supported by this check; this record has {keys}")
            msgs = []
            for i, m in enumerate(rec["messages"]):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise CheckFailed(f"{path}:{n}: messages[{i}] needs string `role` and `content`")
                msgs.append({"role": m["role"], "content": m["content"]})
            out.append((n, msgs))
    if not out:
        raise CheckFailed(f"{path}: no records")
    return out


def read_loratune_loss(path):
    """`loss` (and `target_tokens`, `max_seq_len` when present) from a loratune eval JSON.

    `loratune eval` writes one object with the summary flattened at the top level
    ({"model": ..., "files": [...], "max_seq_len": N, "target_tokens": N, "loss": x, ...}).
    Also accepted: a list of such objects (or an object whose "files" entries carry "loss"),
    combined weighted by target_tokens.
    """
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(obj, dict) and "loss" in obj:
        return float(obj["loss"]), obj.get("target_tokens"), obj.get("max_seq_len")
    parts = obj if isinstance(obj, list) else (obj.get("files") if isinstance(obj, dict) else None)
    if isinstance(parts, list) and parts and all(isinstance(p, dict) and "loss" in p for p in parts):
        msl = {p.get("max_seq_len", obj.get("max_seq_len") if isinstance(obj, dict) else None) for p in parts}
        msl = msl.pop() if len(msl) == 1 else None
        if len(parts) == 1:
            return float(parts[0]["loss"]), parts[0].get("target_tokens"), msl
        if not all(isinstance(p.get("target_tokens"), int) for p in parts):
            raise CheckFailed(f"{path}: several losses but no target_tokens to combine them")
        n = sum(p["target_tokens"] for p in parts)
        return sum(float(p["loss"]) * p["target_tokens"] for p in parts) / n, n, msl
    raise CheckFailed(f"{path}: no `loss` field (expected the JSON written by `loratune eval`)")


def load_base(path):
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf(p)
    if p.is_dir():
        return load_hf_dir(p)
    raise CheckFailed(f"--base {path}: expected a .gguf file or a Hugging Face model folder")


def attach_adapter(base, adapter_dir):
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        if not (adapter_dir / name).is_file():
            raise CheckFailed(f"--adapter {adapter_dir}: {name} is missing")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    print(f"adapter      {adapter_dir}: peft_type={cfg.get('peft_type')} r={cfg.get('r')} "
          f"lora_alpha={cfg.get('lora_alpha')} target_modules={cfg.get('target_modules')} "
          f"use_rslora={cfg.get('use_rslora')} use_dora={cfg.get('use_dora')} "
          f"fan_in_fan_out={cfg.get('fan_in_fan_out')} (written by peft_version={cfg.get('peft_version')})")

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    for w in caught:
        msg = str(w.message)
        print(f"peft warning {w.category.__name__}: {msg}")
        if "missing adapter keys" in msg or "unexpected key" in msg.lower():
            problems.append(f"PEFT: {msg}")
    model.eval()

    lora_modules = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    print(f"lora modules {len(lora_modules)} attached by PEFT "
          f"(e.g. {lora_modules[0] if lora_modules else '-'})")
    if not lora_modules:
        problems.append("PEFT attached no LoRA module (target_modules match nothing?)")

    # PeftModel.from_pretrained warns about missing keys only; compare the names ourselves.
    file_sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    with warnings.catch_warnings():
        # it looks for the base's config.json to decide about embedding layers; irrelevant here
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model_sd = get_peft_model_state_dict(model)
    unexpected = sorted(set(file_sd) - set(model_sd))
    missing = sorted(set(model_sd) - set(file_sd))
    print(f"keys         file {len(file_sd)}, PEFT expects {len(model_sd)}; "
          f"unexpected {len(unexpected)}, missing {len(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the model): {unexpected[:6]}"
                        f"{' ...' if len(unexpected) > 6 else ''}")
    if missing:
        problems.append(f"missing keys (expected by the model, not in the file): {missing[:6]}"
                        f"{' ...' if len(missing) > 6 else ''}")
    common = set(file_sd) & set(model_sd)
    differ = [k for k in common
              if file_sd[k].shape != model_sd[k].shape
              or not torch.equal(file_sd[k].to(model_sd[k].dtype), model_sd[k].detach().cpu())]
    if differ:
        problems.append(f"{len(differ)} tensors differ from the file after loading: {sorted(differ)[:4]}")
    else:
        dtypes = sorted({str(t.dtype).replace('torch.', '') for t in file_sd.values()})
        print(f"values       {len(common)} of the file's {len(file_sd)} tensors loaded exactly into the model "
              f"(file dtype {', '.join(dtypes)})")
    return model, problems


@torch.no_grad()
def file_loss(model, examples):
    """Sum of target NLLs / number of targets over all examples, batch size 1."""
    nll, n = 0.0, 0
    for ids, mask in examples:
        if sum(mask[1:]) == 0:
            continue
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
        assert logits.dtype == torch.float32
        logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        pos = torch.tensor([j for j in range(1, len(ids)) if mask[j]], dtype=torch.long)
        tgt = torch.tensor([ids[j] for j in range(1, len(ids)) if mask[j]], dtype=torch.long)
        nll -= float(logp[pos - 1, tgt].sum())
        n += len(pos)
    if n == 0:
        raise CheckFailed("the data has no target tokens")
    return nll / n, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, metavar="GGUF_OR_HF_DIR")
    ap.add_argument("--adapter", required=True, metavar="RUN_DIR",
                    help="folder with adapter_model.safetensors + adapter_config.json")
    ap.add_argument("--data", required=True, nargs="+", metavar="FILE.jsonl")
    ap.add_argument("--loratune-eval", required=True, metavar="EVAL_JSON")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="truncate examples to N tokens (default: the eval JSON's max_seq_len, else 2048)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |PEFT loss - loratune loss|")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        ok = run(args)
    except CheckFailed as e:
        print(f"FAIL: {e}")
        sys.exit(1)
    sys.exit(0 if ok else 1)


def run(args):
    lt_loss, lt_targets, lt_msl = read_loratune_loss(args.loratune_eval)
    max_seq_len = args.max_seq_len or lt_msl or 2048
    if args.max_seq_len and lt_msl and args.max_seq_len != lt_msl:
        print(f"note: --max-seq-len {args.max_seq_len} but the eval JSON says max_seq_len {lt_msl}")
    records = [(path, n, msgs) for path in args.data for n, msgs in read_conversations(path)]

    t0 = time.perf_counter()
    tokenizer, base = load_base(args.base)
    model, problems = attach_adapter(base, args.adapter)
    print(f"loaded       {args.base} + adapter in {time.perf_counter() - t0:.1f}s "
          f"(torch {torch.__version__}, peft {peft.__version__})")

    examples, truncated = [], 0
    for path, n, msgs in records:
        try:
            case = build_chat_case(tokenizer, f"{path}:{n}", msgs)
        except AssertionError as e:
            raise CheckFailed(f"{path}:{n}: cannot encode: {e}")
        ids, mask = case["input_ids"], case["target_mask"]
        truncated += len(ids) > max_seq_len
        examples.append((ids[:max_seq_len], mask[:max_seq_len]))
    n_tokens = sum(len(ids) for ids, _ in examples)
    print(f"data         {len(examples)} conversations from {', '.join(args.data)}, {n_tokens} tokens"
          f"{f', {truncated} truncated' if truncated else ''} (max_seq_len {max_seq_len})")

    t0 = time.perf_counter()
    peft_loss, n_targets = file_loss(model, examples)
    with model.disable_adapter():
        base_loss, _ = file_loss(model, examples)
    print(f"scored       {n_targets} target tokens, twice, in {time.perf_counter() - t0:.1f}s")

    diff = abs(peft_loss - lt_loss)
    print(f"base loss    {base_loss:.6f}  (PEFT, adapter disabled)")
    print(f"peft loss    {peft_loss:.6f}  (PEFT, adapter enabled; adapter moves the loss by {peft_loss - base_loss:+.6f})")
    print(f"loratune     {lt_loss:.6f}  ({args.loratune_eval})")
    print(f"|difference| {diff:.3e}  (tolerance {args.tol:g})")

    if lt_targets is not None and int(lt_targets) != n_targets:
        problems.append(f"target token count differs: loratune {lt_targets}, reference {n_targets} "
                        "(different data, masking or max_seq_len)")
    if not math.isfinite(lt_loss) or not diff <= args.tol:
        problems.append(f"loss differs by {diff:.3e} > tol {args.tol:g}")
    if abs(peft_loss - base_loss) <= args.tol:
        print("note: the adapter does not change the loss beyond the tolerance (a fresh adapter has "
              "lora_B = 0), so the loss comparison says little about the adapter weights")
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("OK")
    return not problems


if __name__ == "__main__":
    main()
