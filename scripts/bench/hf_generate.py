#!/usr/bin/env python3
"""transformers' generate speed, the peer figure for `loratune generate`: one sequence, greedy,
KV cache, a fixed number of new tokens (EOS cannot stop it early: min_new_tokens).

    python3 scripts/bench/hf_generate.py --gguf models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --device cpu --dtype f32 --threads 2 --max-new-tokens 128
    python3 scripts/bench/hf_generate.py --model DIR [--adapter PEFT_DIR] --device cuda --dtype bf16

The prompt is rendered with the chat template (add_generation_prompt=True). After one
warm-up, each of --repeats runs times a prefill (generate with max_new_tokens=1) and the full
generate; decode tokens/s = (new - 1) / (full - prefill), the rate after the first token.
Medians are printed and written to --json. With --adapter the PEFT adapter is attached
unmerged, as loratune's --adapter applies it.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face layout folder")
    src.add_argument("--gguf", help="GGUF file (dequantized by transformers)")
    ap.add_argument("--adapter")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--prompt", default="Write a short story about a lighthouse keeper who finds a message in a bottle.")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if args.gguf:
        p = Path(args.gguf)
        where = dict(pretrained_model_name_or_path=str(p.parent), gguf_file=p.name)
    else:
        where = dict(pretrained_model_name_or_path=args.model)
    tok = AutoTokenizer.from_pretrained(**where)
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype).to(args.device).eval()
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to(args.device)
    n = args.max_new_tokens
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def timed(new_tokens):
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=pad, use_cache=True)
        sync()
        return time.perf_counter() - t, out.shape[1] - ids.shape[1]

    timed(8)  # warm-up: kernels, caches, allocator
    runs = []
    for _ in range(args.repeats):
        prefill, _ = timed(1)
        total, new = timed(n)
        runs.append({"prefill_s": prefill, "total_s": total, "new_tokens": new,
                     "decode_tokens_per_s": (new - 1) / max(total - prefill, 1e-9), "tokens_per_s": new / total})
    med = {k: statistics.median(r[k] for r in runs) for k in ("prefill_s", "total_s", "decode_tokens_per_s", "tokens_per_s")}
    result = {"tool": "transformers", "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
              "source": args.model or args.gguf, "adapter": args.adapter, "device": args.device, "dtype": args.dtype,
              "threads": torch.get_num_threads(), "prompt_tokens": ids.shape[1], "new_tokens": n, "runs": runs, "median": med}
    print(f"transformers generate: prompt {ids.shape[1]} tokens, {n} new; prefill {med['prefill_s']:.3f}s, "
          f"decode {med['decode_tokens_per_s']:.1f} tokens/s, overall {med['tokens_per_s']:.1f} tokens/s (median of {args.repeats})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
