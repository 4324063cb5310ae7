"""The transformers side of benches/load_eval.rs: load the same GGUF on CPU in float32
and evaluate the same 100 conversations with the same masking, batch size 8.
Run through scripts/bench-load-eval.sh (needs scripts/reference/setup-venv.sh)."""
import json, sys, time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "scripts" / "reference"))
from make_fixtures import build_chat_case  # the reference masking rule

gguf = root / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
torch.set_num_threads(max(1, torch.get_num_threads()))

t = time.perf_counter()
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
model.eval()
load_s = time.perf_counter() - t

rows = [json.loads(l) for l in open(root / "examples/data/calendar-sample.jsonl")]
convs = []
for i in range(100):
    msgs = [dict(m) for m in rows[i % len(rows)]["messages"]]
    for m in msgs:
        if m["role"] == "user":
            m["content"] = f"{m['content']} (request {i})"
    convs.append(msgs)

cases = [build_chat_case(tok, f"c{i}", m) for i, m in enumerate(convs)]
encoded = [(c["input_ids"], c["target_mask"]) for c in cases]
order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
t = time.perf_counter()
nll, ntok, ntgt = 0.0, 0, 0
with torch.no_grad():
    for s in range(0, len(order), 8):
        batch = [encoded[i] for i in order[s:s + 8]]
        T = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), T), tok.eos_token_id or 0, dtype=torch.long)
        att = torch.zeros((len(batch), T), dtype=torch.long)
        lab = torch.full((len(batch), T), -100, dtype=torch.long)
        for b, (x, m) in enumerate(batch):
            ids[b, :len(x)] = torch.tensor(x)
            att[b, :len(x)] = 1
            lab[b, :len(x)] = torch.tensor([xi if mi else -100 for xi, mi in zip(x, m)])
            ntok += len(x)
        logits = model(input_ids=ids, attention_mask=att).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1)
        tgt = lab[:, 1:]
        keep = tgt != -100
        nll -= lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].double().sum().item()
        ntgt += int(keep.sum())
eval_s = time.perf_counter() - t
print(f"transformers  gguf load  {load_s:.3f} s")
print(f"transformers  eval 100 conversations  {eval_s:.2f} s  {ntok / eval_s:.0f} tokens/s  ({ntok} tokens, loss {nll / ntgt:.4f})")
print(json.dumps({"tool": "transformers", "load_s": load_s, "eval_s": eval_s, "tokens": ntok, "tokens_per_s": ntok / eval_s, "loss": nll / ntgt}))
