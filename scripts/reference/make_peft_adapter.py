#!/usr/bin/env python3
"""A PEFT-written adapter for loratune to read: rsLoRA, all seven target modules (attention
and MLP), on the tiny preset; with the loss transformers + PEFT compute with it, float32, CPU.

    target/release/loratune init-model --preset tiny --out /tmp/tiny
    scripts/reference/.venv/bin/python scripts/reference/make_peft_adapter.py \
        --model /tmp/tiny --out tests/fixtures/peft_adapter_tiny_rslora

`init-model --preset tiny` (seed 0) always writes the same weights, so the test rebuilds the
base model instead of committing it.

Writes into --out:
  adapter_model.safetensors, adapter_config.json   PEFT's save_pretrained output
      (LoraConfig r=4, lora_alpha=8, use_rslora=True so scaling = 8/sqrt(4) = 4, all seven
      projections, dropout 0, bias "none", CAUSAL_LM), with lora_A and lora_B replaced by
      torch.randn(shape, generator=manual_seed(SEED)) * STD in named_parameters() order.
  case.json   input_ids (2 rows of 24 ids from a seeded generator, no padding), `loss`
      (mean cross-entropy of the PEFT model with labels = input_ids: every token after the
      first is a target), `base_loss` (adapter disabled), `lora_scaling`, versions, command.
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
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

SEED = 1234
STD = 0.2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the tiny preset folder from init-model")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    cfg = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * STD)
    out = Path(args.out)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template, not a fixture

    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
        with model.disable_adapter():
            base_loss = model(input_ids=ids, labels=ids).loss.item()
    scaling = model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    case = {
        "input_ids": ids.tolist(),
        "loss": loss,
        "base_loss": base_loss,
        "lora_scaling": scaling,
        "targets": TARGETS,
        "versions": {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
    }
    (out / "case.json").write_text(json.dumps(case, indent=1) + "\n")
    print(f"loss {loss:.7f} (base {base_loss:.7f}), scaling {scaling}, wrote {out}")


if __name__ == "__main__":
    main()
