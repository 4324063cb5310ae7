#!/usr/bin/env python3
"""Reference numbers for loratune's tests, computed with transformers (float32, CPU).

For each model given, writes a JSON fixture with, per case: the token ids, the target mask,
the mean cross-entropy over the target tokens, and the first logits at the last position.
The Rust tests compare loratune's tokenizer, chat rendering, masking and f32 loss against it.

    scripts/reference/.venv/bin/python scripts/reference/make_fixtures.py \
        --smollm2 models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--tiny models/tiny] --out-dir tests/fixtures

The masking rules implemented here are loratune's definition (see scripts/reference/README.md).
"""

import argparse
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path

# Never reach for a model hub: everything is loaded from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
N_LOGITS_HEAD = 8
MAX_TOKENS = 200

# ---------------------------------------------------------------------------------------------
# Cases (shared by every model)
# ---------------------------------------------------------------------------------------------

TEXT_CASES = [
    (
        "text_english",
        "The quick brown fox jumps over the lazy dog. Meanwhile, a small team of engineers "
        "spent the afternoon tuning a language model, checking every number twice before "
        "they trusted it.",
    ),
    (
        "text_digits_punct",
        "In 2024, 3.14159 × 12 = 37.699 and 1,000,000 items cost $4.99 each (approx. 12% off); "
        "see §3.2, pp. 10-12!",
    ),
    (
        "text_unicode",
        "naïve café — 日本語 🙂 Ünïcödé: Straße, façade, Ελληνικά, русский, emoji 🚀🔥 and “quotes”.",
    ),
    (
        "text_code",
        "def mean(xs):\n"
        "    \"\"\"Average of a list.\"\"\"\n"
        "    if not xs:\n"
        "        return 0.0\n"
        "\n"
        "    total = 0\n"
        "    for x in xs:\n"
        "\ttotal += x  # a tab-indented line\n"
        "\n"
        "\n"
        "    return total / len(xs)\n",
    ),
]

CHAT_CASES = [
    (
        "chat_system_single_turn",
        [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
    ),
    (
        "chat_no_system_single_turn",
        [
            {"role": "user", "content": "Give me a synonym for happy."},
            {"role": "assistant", "content": "A common synonym for happy is joyful."},
        ],
    ),
    (
        "chat_multi_turn",
        [
            {"role": "system", "content": "You help with arithmetic."},
            {"role": "user", "content": "What is 12 times 7?"},
            {"role": "assistant", "content": "12 times 7 is 84."},
            {"role": "user", "content": "And divided by 4?"},
            {"role": "assistant", "content": "84 divided by 4 is 21."},
        ],
    ),
    (
        "chat_json_answer",
        [
            {"role": "user", "content": "Return a JSON object describing Ada Lovelace with keys name, born and fields."},
            {
                "role": "assistant",
                "content": '{"name": "Ada Lovelace", "born": 1815, "fields": ["mathematics", "computing"]}',
            },
        ],
    ),
]

PROMPT_COMPLETION_CASES = [
    (
        "prompt_completion_translate",
        "Translate to French: The cat sleeps on the sofa.\nFrench:",
        " Le chat dort sur le canapé.",
    ),
]


# ---------------------------------------------------------------------------------------------
# Tokenization helpers
# ---------------------------------------------------------------------------------------------


def as_id_list(encoded):
    """`apply_chat_template(tokenize=True)` returns a list, or a dict/BatchEncoding, by version."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):
        assert len(encoded) == 1, "expected a single sequence"
        encoded = list(encoded[0])
    return [int(i) for i in encoded]


def render(tokenizer, messages, add_generation_prompt):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_with_offsets(tokenizer, text, add_special_tokens):
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    assert len(ids) == len(offsets)
    return ids, offsets


def byte_start_chars(tokenizer, ids, text):
    """Start char of each token from the tokens' own bytes, independently of the offset mapping.

    Only used to cross-check the offsets when the tokenizer is byte-level BPE: the Rust side may
    compute starts this way. Returns None when the tokens' bytes do not reproduce `text`.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    unbyte = {ch: b for b, ch in bytes_to_unicode().items()}
    added = {int(t_id): t.content for t_id, t in tokenizer.added_tokens_decoder.items()}
    pieces = []
    for tok_id in ids:
        if tok_id in added:
            pieces.append(added[tok_id].encode("utf-8"))
            continue
        tok = tokenizer.convert_ids_to_tokens(tok_id)
        if tok is None or any(ch not in unbyte for ch in tok):
            return None
        pieces.append(bytes(unbyte[ch] for ch in tok))
    data = text.encode("utf-8")
    if b"".join(pieces) != data:
        return None
    # char index of every byte position
    char_of_byte = []
    for ci, ch in enumerate(text):
        char_of_byte.extend([ci] * len(ch.encode("utf-8")))
    char_of_byte.append(len(text))
    starts, pos = [], 0
    for piece in pieces:
        starts.append(char_of_byte[pos])
        pos += len(piece)
    return starts


# ---------------------------------------------------------------------------------------------
# Cases -> ids + target masks (loratune's rules)
# ---------------------------------------------------------------------------------------------


def build_text_case(tokenizer, name, text):
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    mask = [0] + [1] * (len(ids) - 1)
    return {"name": name, "kind": "text", "text": text, "rendered": text, "input_ids": ids, "target_mask": mask}


def chat_mask(tokenizer, messages, rendered, ids, starts):
    eos = tokenizer.eos_token_id
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        assert upto.startswith(prefix), f"render(messages[:{i}], gen prompt) is not a prefix of messages[:{i + 1}]"
        assert rendered.startswith(upto), f"render(messages[:{i + 1}]) is not a prefix of the full rendering"
        spans.append((len(prefix), len(upto)))

    mask = [0] * len(ids)
    for lo, hi in spans:
        inside = [j for j, s in enumerate(starts) if lo <= s < hi]
        eos_positions = [j for j in inside if ids[j] == eos]
        last = eos_positions[-1] if eos_positions else None
        for j in inside:
            if last is None or j <= last:
                mask[j] = 1
    mask[0] = 0
    return mask, spans


def build_chat_case(tokenizer, name, messages):
    rendered = render(tokenizer, messages, add_generation_prompt=False)
    ids, offsets = encode_with_offsets(tokenizer, rendered, add_special_tokens=False)
    templ_ids = as_id_list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False))
    assert ids == templ_ids, f"{name}: tokenizer(rendered) differs from apply_chat_template(tokenize=True)"

    starts = [a for a, _ in offsets]
    mask, spans = chat_mask(tokenizer, messages, rendered, ids, starts)

    # Cross-check: starts recomputed from token bytes must give the same mask.
    byte_starts = byte_start_chars(tokenizer, ids, rendered)
    if byte_starts is not None:
        mask_b, _ = chat_mask(tokenizer, messages, rendered, ids, byte_starts)
        assert mask_b == mask, f"{name}: mask from offsets differs from mask from token bytes"
    else:
        print(f"  note: {name}: token bytes do not spell the text; offset cross-check skipped", file=sys.stderr)

    return {
        "name": name,
        "kind": "chat",
        "messages": messages,
        "rendered": rendered,
        "input_ids": ids,
        "target_mask": mask,
        "assistant_char_spans": [list(s) for s in spans],
    }


def build_prompt_completion_case(tokenizer, name, prompt, completion):
    text = prompt + completion
    ids, offsets = encode_with_offsets(tokenizer, text, add_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    # tokens added by the tokenizer itself (e.g. BOS at (0, 0)) are never targets
    added = [tok_id in special and a == b for tok_id, (a, b) in zip(ids, offsets)]
    mask = [1 if (a >= len(prompt) and not is_added) else 0 for (a, _), is_added in zip(offsets, added)]

    # Cross-check: starts recomputed from the tokens' bytes must give the same mask.
    kept = [j for j in range(len(ids)) if not added[j]]
    byte_starts = byte_start_chars(tokenizer, [ids[j] for j in kept], text)
    if byte_starts is not None:
        mask_b = [0] * len(ids)
        for j, start in zip(kept, byte_starts):
            mask_b[j] = 1 if start >= len(prompt) else 0
        assert mask_b == mask, f"{name}: mask from offsets differs from mask from token bytes"
    else:
        print(f"  note: {name}: token bytes do not spell the text; offset cross-check skipped", file=sys.stderr)

    ids = ids + [int(tokenizer.eos_token_id)]
    mask = mask + [1]
    mask[0] = 0
    return {
        "name": name,
        "kind": "prompt_completion",
        "prompt": prompt,
        "completion": completion,
        "rendered": text,
        "input_ids": ids,
        "target_mask": mask,
    }


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score_case(model, case):
    ids = case["input_ids"]
    mask = case["target_mask"]
    assert len(ids) == len(mask) and mask[0] == 0
    assert len(ids) <= MAX_TOKENS + 8, f"{case['name']}: {len(ids)} tokens, keep cases short"
    input_ids = torch.tensor([ids], dtype=torch.long)
    logits = model(input_ids=input_ids).logits[0]  # [T, V] float32
    assert logits.dtype == torch.float32

    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    nll_sum, n = 0.0, 0
    for j in range(1, len(ids)):
        if mask[j]:
            nll_sum += -float(logp[j - 1, ids[j]])
            n += 1
    assert n > 0, f"{case['name']}: no target tokens"
    loss = nll_sum / n

    # Cross-check against transformers' own loss (labels shifted inside the model).
    labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]], dtype=torch.long)
    hf_loss = float(model(input_ids=input_ids, labels=labels).loss)
    assert abs(hf_loss - loss) < 1e-4, f"{case['name']}: own loss {loss} vs transformers {hf_loss}"

    case["n_targets"] = n
    case["loss"] = loss
    case["last_logits_head"] = [float(x) for x in logits[-1, :N_LOGITS_HEAD].tolist()]
    return nll_sum, n


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def load_gguf(path):
    path = Path(path)
    d, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    return tokenizer, model


def load_hf_dir(path):
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    return tokenizer, model


def versions():
    import gguf
    import safetensors
    import tokenizers

    try:
        from importlib.metadata import version as pkg_version

        gguf_version = pkg_version("gguf")
    except Exception:  # pragma: no cover
        gguf_version = getattr(gguf, "__version__", "unknown")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": gguf_version,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def model_config_summary(model):
    c = model.config
    keys = [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
    ]
    out = {k: getattr(c, k) for k in keys if hasattr(c, k)}
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None)
    if rope is not None:
        out["rope_parameters"] = dict(rope)
    if getattr(c, "rope_theta", None) is not None:
        out["rope_theta"] = c.rope_theta
    return out


def rel(p):
    p = Path(p).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def make_fixture(kind, tokenizer, model, model_label, command):
    model.eval()
    cases = []
    for name, text in TEXT_CASES:
        cases.append(build_text_case(tokenizer, name, text))
    for name, messages in CHAT_CASES:
        cases.append(build_chat_case(tokenizer, name, messages))
    for name, prompt, completion in PROMPT_COMPLETION_CASES:
        cases.append(build_prompt_completion_case(tokenizer, name, prompt, completion))

    total_nll, total_n = 0.0, 0
    for case in cases:
        nll, n = score_case(model, case)
        total_nll += nll
        total_n += n
        print(f"  [{kind}] {case['name']:32s} tokens={len(case['input_ids']):4d} "
              f"targets={case['n_targets']:4d} loss={case['loss']:.6f}", file=sys.stderr)

    # Field order: the required fields first, in the documented order.
    ordered = []
    for c in cases:
        o = {"name": c["name"], "kind": c["kind"]}
        for k in ("text", "messages", "prompt", "completion"):
            if k in c:
                o[k] = c[k]
        for k in ("rendered", "input_ids", "target_mask", "n_targets", "loss", "last_logits_head"):
            o[k] = c[k]
        if "assistant_char_spans" in c:
            o["assistant_char_spans"] = c["assistant_char_spans"]
        ordered.append(o)

    assert all(math.isfinite(c["loss"]) for c in ordered)
    return {
        "generated_by": command,
        "versions": versions(),
        "model": model_label,
        "eos_token_id": int(tokenizer.eos_token_id),
        "bos_token_id": None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
        "model_config": model_config_summary(model),
        "cases": ordered,
        "batch_loss": total_nll / total_n,
    }


def dumps_fixture(obj):
    """JSON with one line per top-level field and per case field (diff-friendly, still plain JSON)."""
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    items = list(obj.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if key == "cases":
            lines.append(f" {dump(key)}: [")
            for ci, case in enumerate(value):
                fields = [f"   {dump(k)}: {dump(v)}" for k, v in case.items()]
                tail = "," if ci + 1 < len(value) else ""
                lines.append("  {\n" + ",\n".join(fields) + "\n  }" + tail)
            lines.append(" ]" + comma)
        else:
            lines.append(f" {dump(key)}: {dump(value)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj))
    return text


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps_fixture(obj))
    os.replace(tmp, path)
    print(f"wrote {rel(path)}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", metavar="GGUF", help="SmolLM2 GGUF file -> reference_smollm2.json")
    ap.add_argument("--tiny", metavar="HF_DIR", nargs="+", default=[],
                    help="HF model folder(s) (Llama/Qwen2 arch), e.g. models/tiny-qwen2 -> reference_tiny_qwen2.json")
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "tests" / "fixtures"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if not args.smollm2 and not args.tiny:
        ap.error("give --smollm2 and/or --tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    out_dir = Path(args.out_dir)
    py = "scripts/reference/.venv/bin/python scripts/reference/make_fixtures.py"

    if args.smollm2:
        cmd = f"{py} --smollm2 {shlex.quote(rel(args.smollm2))} --out-dir {shlex.quote(rel(out_dir))}"
        print(f"loading {args.smollm2}", file=sys.stderr)
        tokenizer, model = load_gguf(args.smollm2)
        fixture = make_fixture("smollm2", tokenizer, model, Path(args.smollm2).name, cmd)
        write_json(out_dir / "reference_smollm2.json", fixture)
        del model

    for tiny in args.tiny:
        # Fixture name from the folder name: models/tiny-llama3 -> reference_tiny_llama3.json
        stem = Path(tiny).name.replace("-", "_")
        cmd = f"{py} --tiny {shlex.quote(rel(tiny))} --out-dir {shlex.quote(rel(out_dir))}"
        print(f"loading {tiny}", file=sys.stderr)
        tokenizer, model = load_hf_dir(tiny)
        fixture = make_fixture(stem, tokenizer, model, rel(tiny), cmd)
        write_json(out_dir / f"reference_{stem}.json", fixture)


if __name__ == "__main__":
    main()
