#!/usr/bin/env python3
"""Synthetic chat data for scripts/bench-lint.sh: N conversations (messages format) that look
like instruction data in size and shape, with known duplicates planted.

    python3 scripts/bench/make_lint_data.py OUT_DIR [--n 100000] [--eval 2000] [--seed 1]

- Words come from a Zipf-like distribution over a 20k-word made-up vocabulary, so common
  words repeat across examples as in real text; a third of the examples share one of five
  system prompts.
- One to three user/assistant exchanges; user turns 8-60 words, assistant turns 20-200.
- Planted: 1% exact duplicates (case and spacing changed), 1% near duplicates (5% of the
  words replaced), and in the eval file 2% exact and 2% near copies of training examples.
Writes OUT_DIR/train.jsonl, OUT_DIR/eval.jsonl and OUT_DIR/planted.json (the counts).
"""

import argparse
import json
import random
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--eval", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    syll = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "qui", "dan", "po", "ish", "ma", "zet", "ru", "ne"]
    vocab = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(40_000)})[:20_000]
    rng.shuffle(vocab)
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    systems = [" ".join(rng.choices(vocab, weights, k=rng.randint(10, 40))) for _ in range(5)]

    def sentence(lo, hi):
        words = rng.choices(vocab, weights, k=rng.randint(lo, hi))
        words[0] = words[0].capitalize()
        return " ".join(words) + rng.choice([".", "?", "!", "."])

    def conversation():
        msgs = []
        if rng.random() < 0.33:
            msgs.append({"role": "system", "content": rng.choice(systems)})
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            msgs.append({"role": "user", "content": sentence(8, 60)})
            msgs.append({"role": "assistant", "content": sentence(20, 200)})
        return {"messages": msgs}

    def exact_copy(conv):
        return {"messages": [{"role": m["role"], "content": "  " + m["content"].upper().replace(" ", "  ")} for m in conv["messages"]]}

    def near_copy(conv):
        out = []
        for m in conv["messages"]:
            words = m["content"].split(" ")
            for i in range(len(words)):
                if rng.random() < 0.05:
                    words[i] = rng.choice(vocab)
            out.append({"role": m["role"], "content": " ".join(words)})
        return {"messages": out}

    train = []
    planted = {"exact": 0, "near": 0, "eval_exact": 0, "eval_near": 0}
    while len(train) < a.n:
        r = rng.random()
        if train and r < 0.01:
            train.append(exact_copy(rng.choice(train)))
            planted["exact"] += 1
        elif train and r < 0.02:
            train.append(near_copy(rng.choice(train)))
            planted["near"] += 1
        else:
            train.append(conversation())
    ev = []
    while len(ev) < a.eval:
        r = rng.random()
        if r < 0.02:
            ev.append(exact_copy(rng.choice(train)))
            planted["eval_exact"] += 1
        elif r < 0.04:
            ev.append(near_copy(rng.choice(train)))
            planted["eval_near"] += 1
        else:
            ev.append(conversation())
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", ev)):
        with open(out / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    (out / "planted.json").write_text(json.dumps(planted) + "\n")
    print(f"wrote {len(train)} train and {len(ev)} eval conversations to {out}; planted {planted}")


if __name__ == "__main__":
    main()
