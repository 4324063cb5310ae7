#!/usr/bin/env python3
"""LoRA gradient fixture: a seeded PEFT adapter on SmolLM2, a small batch, its loss and the
gradients of that loss with respect to every LoRA weight, all from PEFT + transformers in
float32 on CPU.

    scripts/reference/.venv/bin/python scripts/reference/make_peft_grads.py \
        --smollm2 models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures/peft_grads_smollm2
    # a Hugging Face folder (the tiny-qwen3 preset, written by `loratune init-model --preset
    # tiny-qwen3 --out models/tiny-qwen3`), adapters on all seven projections:
    scripts/reference/.venv/bin/python scripts/reference/make_peft_grads.py --hf models/tiny-qwen3 \
        --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --out tests/fixtures/peft_grads_tiny_qwen3

Writes into --out:
  adapter_model.safetensors, adapter_config.json   PEFT's own save_pretrained output
      (LoraConfig r=4, lora_alpha=8, q/k/v/o_proj, dropout 0, bias "none", CAUSAL_LM), with
      lora_A and lora_B overwritten by seeded normal values (see "Adapter weights" below).
  case.json   the batch (input_ids, attention_mask, target_mask; right-padded), `loss`
      (PEFT model, mean cross-entropy over every target token of the batch; `loss_f64` the
      same from float64 log-softmax of the float32 logits), `base_loss`
      (adapter disabled), `lora_scaling`, gradient norms, versions, the command line.
  grads.safetensors   float32 d loss / d W for every lora_A / lora_B weight, under the tensor
      names of adapter_model.safetensors (e.g.
      base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight), same shapes.

Adapter weights: g = torch.Generator().manual_seed(SEED); for every LoRA parameter in the order
of PeftModel.named_parameters() (layer by layer; the targets; lora_A then lora_B), the weight is
replaced by torch.randn(shape, generator=g) * std (std_a for lora_A, std_b for lora_B).
The values are in the committed safetensors file: nobody needs to regenerate them to use it.

Loss: labels = input_ids where target_mask == 1 else -100 (padding is never a target);
transformers' causal-LM loss shifts them (token j is predicted from position j - 1) and takes the
mean over all non-ignored labels of the whole batch. The script cross-checks it against its own
float64 sum of token NLLs / number of targets.
"""

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

# PEFT writes adapter_config.json's target_modules from a Python set, so their order follows
# string hashing: pin the hash seed (re-exec once) so that reruns write identical files.
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import build_chat_case, load_gguf, load_hf_dir, rel, versions  # noqa: E402  (the reference rules)

import peft  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_FILE = REPO_ROOT / "examples" / "data" / "calendar-sample.jsonl"
DATA_LINES = [1, 2, 3]  # 1-based line numbers of DATA_FILE
SEED = 1234
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
R, ALPHA = 4, 8
SMOLLM2_LAYERS = 30


def module_path(target):
    """Where a target projection sits inside a decoder layer."""
    return f"self_attn.{target}" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else f"mlp.{target}"


def read_lines(path, lines):
    rows = open(path, encoding="utf-8").read().splitlines()
    out = []
    for n in lines:
        rec = json.loads(rows[n - 1])
        assert isinstance(rec.get("messages"), list), f"{path}:{n}: expected a `messages` record"
        out.append(rec["messages"])
    return out


def make_batch(tokenizer, conversations):
    cases = [build_chat_case(tokenizer, f"line{n}", msgs) for n, msgs in zip(DATA_LINES, conversations)]
    if tokenizer.pad_token_id is not None:
        pad_id, pad_source = int(tokenizer.pad_token_id), "pad_token_id"
    else:
        pad_id, pad_source = int(tokenizer.eos_token_id), "eos_token_id"
    T = max(len(c["input_ids"]) for c in cases)
    ids = [c["input_ids"] + [pad_id] * (T - len(c["input_ids"])) for c in cases]
    att = [[1] * len(c["input_ids"]) + [0] * (T - len(c["input_ids"])) for c in cases]
    tgt = [c["target_mask"] + [0] * (T - len(c["input_ids"])) for c in cases]
    return cases, pad_id, pad_source, ids, att, tgt


def labels_of(ids, tgt):
    return torch.tensor([[t if m else -100 for t, m in zip(r, mr)] for r, mr in zip(ids, tgt)], dtype=torch.long)


def own_loss(logits, ids, tgt):
    """float64 sum of -log p(token j | < j) over targets j >= 1, / number of targets."""
    logp = torch.log_softmax(logits.detach().to(torch.float64), dim=-1)
    nll, n = 0.0, 0
    for b, (row, mrow) in enumerate(zip(ids, tgt)):
        for j in range(1, len(row)):
            if mrow[j]:
                nll -= float(logp[b, j - 1, row[j]])
                n += 1
    return nll / n, n


def peft_key(param_name):
    """PeftModel parameter name -> the name PEFT writes into adapter_model.safetensors."""
    assert ".default." in param_name, param_name
    return param_name.replace(".default.", ".")


def dumps_case(obj):
    """One line per top-level field; 2-D lists one row per line (diff-friendly plain JSON)."""
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines, items = ["{"], list(obj.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
            rows = ",\n".join(f"  {dump(r)}" for r in v)
            lines.append(f" {dump(k)}: [\n{rows}\n ]{comma}")
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            rows = ",\n".join(f"  {dump(r)}" for r in v)
            lines.append(f" {dump(k)}: [\n{rows}\n ]{comma}")
        else:
            lines.append(f" {dump(k)}: {dump(v)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj))
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--smollm2", metavar="GGUF", help="SmolLM2 GGUF file")
    src.add_argument("--hf", metavar="DIR", help="a Hugging Face model folder")
    ap.add_argument("--targets", default=",".join(TARGET_MODULES), help="comma-separated LoRA targets")
    ap.add_argument("--out", default=str(REPO_ROOT / "tests" / "fixtures" / "peft_grads_smollm2"))
    ap.add_argument("--std-a", type=float, default=0.05, help="std of the random lora_A values")
    ap.add_argument("--std-b", type=float, default=0.05, help="std of the random lora_B values")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    py = "scripts/reference/.venv/bin/python scripts/reference/make_peft_grads.py"
    targets = args.targets.split(",")
    source = f"--smollm2 {shlex.quote(rel(args.smollm2))}" if args.smollm2 else f"--hf {shlex.quote(rel(args.hf))}"
    cmd = f"{py} {source} --out {shlex.quote(rel(args.out))}"
    if targets != TARGET_MODULES:
        cmd += f" --targets {','.join(targets)}"
    if args.std_a != 0.05:
        cmd += f" --std-a {args.std_a}"
    if args.std_b != 0.05:
        cmd += f" --std-b {args.std_b}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"loading {args.smollm2 or args.hf}", file=sys.stderr)
    # float32, attn_implementation="eager"
    tokenizer, base = load_gguf(args.smollm2) if args.smollm2 else load_hf_dir(args.hf)
    n_layers = base.config.num_hidden_layers
    assert not args.smollm2 or n_layers == SMOLLM2_LAYERS

    config = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.eval()  # no dropout anywhere (LoRA dropout is 0 anyway)

    # Seeded A and B (B nonzero, so that d loss / d A is nonzero too).
    g = torch.Generator().manual_seed(SEED)
    lora_params = [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    assert len(lora_params) == n_layers * len(targets) * 2, len(lora_params)
    with torch.no_grad():
        for n, p in lora_params:
            std = args.std_a if ".lora_A." in n else args.std_b
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)
    assert all(p.requires_grad for _, p in lora_params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    model.save_pretrained(str(out), safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's generated model card: not part of the fixture
    saved = load_file(str(out / "adapter_model.safetensors"))
    # exactly layers x targets x {A, B}, PEFT's naming, the values we set
    expected = {
        f"base_model.model.model.layers.{i}.{module_path(m)}.lora_{ab}.weight"
        for i in range(n_layers)
        for m in targets
        for ab in "AB"
    }
    assert set(saved) == expected, f"unexpected adapter keys: {sorted(set(saved) ^ expected)[:8]}"
    for n, p in lora_params:
        t = saved[peft_key(n)]
        assert t.dtype == torch.float32 and torch.equal(t, p.detach()), n
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())

    # The batch.
    conversations = read_lines(DATA_FILE, DATA_LINES)
    cases, pad_id, pad_source, ids, att, tgt = make_batch(tokenizer, conversations)
    input_ids = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.tensor(att, dtype=torch.long)
    labels = labels_of(ids, tgt)

    # Base loss (adapter disabled).
    with torch.no_grad(), model.disable_adapter():
        base_out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    base_loss = float(base_out.loss)
    base_own, n_targets = own_loss(base_out.logits, ids, tgt)
    assert abs(base_own - base_loss) < 1e-4, (base_own, base_loss)

    # Adapted loss and its gradients.
    model.zero_grad(set_to_none=True)
    outp = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert outp.logits.dtype == torch.float32
    loss = outp.loss
    loss.backward()
    loss = float(loss.detach())
    own, n2 = own_loss(outp.logits, ids, tgt)
    assert n2 == n_targets and abs(own - loss) < 1e-4, (own, loss)

    grads = {}
    for n, p in lora_params:
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        grads[peft_key(n)] = p.grad.detach().clone().contiguous()
        assert grads[peft_key(n)].shape == saved[peft_key(n)].shape
    assert set(grads) == expected
    grads = {k: grads[k] for k in sorted(grads)}
    save_file(grads, str(out / "grads.safetensors"), metadata={"format": "pt"})
    assert set(load_file(str(out / "grads.safetensors"))) == expected

    def norm(keys):
        return math.sqrt(sum(float(grads[k].double().pow(2).sum()) for k in keys))

    keys_a = [k for k in grads if ".lora_A." in k]
    keys_b = [k for k in grads if ".lora_B." in k]
    gnorm, gnorm_a, gnorm_b = norm(grads), norm(keys_a), norm(keys_b)
    assert all(math.isfinite(x) and x > 0 for x in (gnorm_a, gnorm_b))
    first = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

    vers = versions()
    vers["peft"] = peft.__version__
    case = {
        "generated_by": cmd,
        "versions": vers,
        "model": Path(args.smollm2 or args.hf).name,
        "attn_implementation": base.config._attn_implementation,
        "data_file": rel(DATA_FILE),
        "data_lines": DATA_LINES,
        "masking": "chat (scripts/reference/make_fixtures.py build_chat_case)",
        "lora_r": R,
        "lora_alpha": ALPHA,
        "lora_scaling": ALPHA / R,
        "target_modules": targets,
        "adapter_init": {"seed": SEED, "std_a": args.std_a, "std_b": args.std_b,
                         "order": f"PeftModel.named_parameters(): layer 0..{n_layers - 1}, "
                                  f"{','.join(t.split('_')[0] for t in targets)}, lora_A then lora_B",
                         "draw": "torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std"},
        "pad_id": pad_id,
        "pad_source": pad_source,
        "eos_token_id": int(tokenizer.eos_token_id),
        "lengths": [len(c["input_ids"]) for c in cases],
        "n_targets_per_example": [sum(c["target_mask"]) for c in cases],
        "n_targets": n_targets,
        "loss": loss,
        "loss_f64": own,
        "base_loss": base_loss,
        "loss_definition": "labels = input_ids where target_mask else -100; HF causal-LM loss "
                           "(shift by one, mean over all non-ignored labels of the batch)",
        "grad_norm": gnorm,
        "grad_norm_lora_A": gnorm_a,
        "grad_norm_lora_B": gnorm_b,
        "grad_tensors": len(grads),
        "grad_head": {first: [float(x) for x in grads[first].flatten()[:8]]},
        "shape": [len(ids), len(ids[0])],
        "input_ids": ids,
        "attention_mask": att,
        "target_mask": tgt,
        "messages": conversations,
        "adapter_config": {k: adapter_cfg.get(k) for k in
                           ("peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "bias",
                            "use_rslora", "use_dora", "fan_in_fan_out", "base_model_name_or_path")},
    }
    (out / "case.json").write_text(dumps_case(case), encoding="utf-8")

    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"adapter:   {len(saved)} tensors ({n_layers} layers x {len(targets)} modules x A,B), PEFT naming "
          f"e.g. {first}", file=sys.stderr)
    print(f"batch:     {len(ids)} x {len(ids[0])} tokens, lengths {case['lengths']}, "
          f"{n_targets} targets, pad {pad_id} ({pad_source})", file=sys.stderr)
    print(f"base_loss  {base_loss:.6f}  (adapter disabled)", file=sys.stderr)
    print(f"loss       {loss:.6f}  (PEFT, scaling {ALPHA / R})", file=sys.stderr)
    print(f"grad norm  {gnorm:.6e}  (lora_A {gnorm_a:.6e}, lora_B {gnorm_b:.6e})", file=sys.stderr)
    print(f"wrote {rel(out)}/ ({', '.join(sorted(f.name for f in out.iterdir()))}; {size / 1e6:.2f} MB)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
