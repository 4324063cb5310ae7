#!/usr/bin/env python3
"""Greedy generation reference for `loratune generate`: transformers' generate(do_sample=False)
on SmolLM2 chats, on the tiny preset with and without PEFT's rsLoRA adapter, and on the
tiny-qwen3 preset with and without the PEFT adapter of tests/fixtures/peft_grads_tiny_qwen3
(all seven projections); float32, CPU.

    target/release/loratune init-model --preset tiny --out /tmp/tiny
    target/release/loratune init-model --preset tiny-qwen3 --out /tmp/tiny-qwen3
    scripts/reference/.venv/bin/python scripts/reference/make_generate_fixture.py \\
        --smollm2 models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --tiny /tmp/tiny \\
        --tiny-qwen3 /tmp/tiny-qwen3 --out tests/fixtures/generate_greedy.json

Per case: `prompt_ids`; for chats `messages` and `rendered` (apply_chat_template with
add_generation_prompt=True; its ids asserted equal to tokenizing `rendered` without special
tokens); `eos_token_ids` (the stop ids given to generate); `output_ids` (new tokens, the stop
token included when it stopped on one); `output_text` (decoded, special tokens skipped);
`stopped_on_eos`; `min_top2_margin` (the smallest gap between the best and second-best logit
over the generated steps: how far greedy equality is from a near tie).
The tiny cases have no stop ids (generation_config.eos_token_id = None) and run MAX_NEW_TINY steps.
"""

import argparse
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
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

MAX_NEW_SMOL = 40
MAX_NEW_TINY = 16
TINY_ADAPTER = "tests/fixtures/peft_adapter_tiny_rslora"
QWEN3_ADAPTER = "tests/fixtures/peft_grads_tiny_qwen3"
SMOL_CHATS = [
    ("smollm2_system", [{"role": "system", "content": "You are a concise assistant."},
                        {"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]),
    ("smollm2_capital", [{"role": "user", "content": "What is the capital of France?"}]),
    ("smollm2_list", [{"role": "user", "content": "List three fruits that are red."}]),
]


def greedy(model, prompt_ids, max_new, eos_ids, pad_id):
    ids = torch.tensor([prompt_ids])
    kwargs = dict(do_sample=False, max_new_tokens=max_new, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=pad_id, attention_mask=torch.ones_like(ids))
    if eos_ids:
        kwargs["eos_token_id"] = eos_ids
    else:
        # No stop token at all, so every step runs. (min_new_tokens would instead forbid
        # the EOS token, changing the greedy choice.)
        model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(ids, **kwargs)
    new = out.sequences[0, ids.shape[1]:].tolist()
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append((top[0] - top[1]).item())
    return new, min(margins)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", required=True)
    ap.add_argument("--tiny", required=True, help="init-model --preset tiny folder (seed 0)")
    ap.add_argument("--tiny-qwen3", required=True, help="init-model --preset tiny-qwen3 folder (seed 0)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    cases = []

    p = Path(args.smollm2)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32,
                                                 attn_implementation="eager", local_files_only=True).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    for name, messages in SMOL_CHATS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False).input_ids
        templ = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        templ = templ["input_ids"] if isinstance(templ, dict) or hasattr(templ, "keys") else templ
        assert list(templ) == ids, (templ, ids)
        new, margin = greedy(model, ids, MAX_NEW_SMOL, eos_ids, tok.pad_token_id or eos_ids[0])
        stopped = bool(new) and new[-1] in eos_ids
        text = tok.decode(new, skip_special_tokens=True)
        print(f"{name}: {text!r} (margin {margin:.3f}, eos {stopped})")
        cases.append(dict(name=name, model="smollm2", adapter=None, messages=messages, rendered=rendered,
                          prompt_ids=ids, eos_token_ids=eos_ids, output_ids=new, output_text=text,
                          stopped_on_eos=stopped, min_top2_margin=margin))

    base = AutoModelForCausalLM.from_pretrained(args.tiny, dtype=torch.float32, attn_implementation="eager").eval()
    prompt = torch.randint(3, 250, (6,), generator=torch.Generator().manual_seed(7)).tolist()
    new, margin = greedy(base, prompt, MAX_NEW_TINY, [], 0)
    print(f"tiny_base: {new} (margin {margin:.3f})")
    cases.append(dict(name="tiny_base", model="tiny", adapter=None, prompt_ids=prompt, eos_token_ids=[],
                      output_ids=new, stopped_on_eos=False, min_top2_margin=margin))
    tuned = PeftModel.from_pretrained(base, TINY_ADAPTER).eval()
    new, margin = greedy(tuned, prompt, MAX_NEW_TINY, [], 0)
    print(f"tiny_peft_rslora: {new} (margin {margin:.3f})")
    cases.append(dict(name="tiny_peft_rslora", model="tiny", adapter=TINY_ADAPTER, prompt_ids=prompt, eos_token_ids=[],
                      output_ids=new, stopped_on_eos=False, min_top2_margin=margin))

    base = AutoModelForCausalLM.from_pretrained(args.tiny_qwen3, dtype=torch.float32,
                                                attn_implementation="eager").eval()
    for name, adapter in (("tiny_qwen3_base", None), ("tiny_qwen3_peft", QWEN3_ADAPTER)):
        model = base if adapter is None else PeftModel.from_pretrained(base, adapter).eval()
        new, margin = greedy(model, prompt, MAX_NEW_TINY, [], 0)
        print(f"{name}: {new} (margin {margin:.3f})")
        cases.append(dict(name=name, model="tiny-qwen3", adapter=adapter, prompt_ids=prompt, eos_token_ids=[],
                          output_ids=new, stopped_on_eos=False, min_top2_margin=margin))

    fixture = {
        "generated_by": " ".join(shlex.quote(a) for a in ["scripts/reference/.venv/bin/python", Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "versions": {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "cases": cases,
    }
    Path(args.out).write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
