"""Reference scores for loratune's text metrics (src/eval/text_metrics.rs).

ROUGE-L comes from Google's rouge-score package (RougeScorer(["rougeL"]), no stemming).
Exact match and token F1 follow the SQuAD v1.1 evaluation script's definitions
(normalize_answer: lower case, ASCII punctuation removed, articles removed, whitespace
collapsed), with SQuAD v2's rule for empty answers. JSON validity: the reference is a JSON
object or array and the prediction parses (after removing a Markdown code fence).

Rerun (writes tests/fixtures/text_metrics.json):
    python3 -m venv /tmp/rvenv && /tmp/rvenv/bin/pip install rouge-score==0.1.2
    /tmp/rvenv/bin/python scripts/reference/make_text_metrics_fixture.py
"""

import collections
import json
import re
import string
from importlib.metadata import version

from rouge_score import rouge_scorer

CASES = [
    ("The cat sat on the mat.", "the cat is on the mat"),
    ("Paris", "The capital of France is Paris."),
    ("Paris is the capital of France", "The capital of France is Paris."),
    ("", ""),
    ("", "something"),
    ("an answer", ""),
    ("A B C D E", "e d c b a"),
    ("the the the", "a an the"),
    ("7 + 5 = 12", "7 + 5 = 12."),
    ("It's 12:30 -- don't be late!", "its 1230 dont be late"),
    ("hello hello world", "hello world world"),
    ('{"title": "Haircut", "day": "Friday", "time": "15:00", "location": "Fade Lab"}',
     '{"title": "Haircut", "day": "Friday", "time": "15:00", "location": "Fade Lab"}'),
    ('{"title": "Haircut", "day": "Friday", "time": "3pm", "location": null}',
     '{"title": "Haircut", "day": "Friday", "time": "15:00", "location": "Fade Lab"}'),
    ('```json\n{"title": "Gym", "day": "Monday"}\n```', '{"title": "Gym", "day": "Monday"}'),
    ('{"title": "Gym", "day": ', '{"title": "Gym", "day": "Monday"}'),
    ("[1, 2, 3]", "[1, 2]"),
    ("42", "42"),
    ("Café au lait, s'il vous plaît", "cafe au lait sil vous plait"),
    ("Running runs ran", "run running"),
    ("The quick brown fox jumps over the lazy dog", "A quick brown dog jumps over the lazy fox"),
]


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred, ref):
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred, ref):
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    same = sum((collections.Counter(p) & collections.Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def strip_fence(text):
    t = text.strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        inner = t[3:-3]
        if "\n" in inner:
            inner = inner.split("\n", 1)[1]
        return inner.strip()
    return t


def json_valid(pred, ref):
    try:
        r = json.loads(ref.strip())
    except ValueError:
        return None
    if not isinstance(r, (dict, list)):
        return None
    try:
        json.loads(strip_fence(pred))
        return True
    except ValueError:
        return False


def main():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = []
    for pred, ref in CASES:
        rl = scorer.score(ref, pred)["rougeL"]  # score(target, prediction)
        cases.append({
            "prediction": pred,
            "reference": ref,
            "exact_match": exact_match(pred, ref),
            "token_f1": token_f1(pred, ref),
            "rouge_l": {"p": rl.precision, "r": rl.recall, "f": rl.fmeasure},
            "json_valid": json_valid(pred, ref),
        })
    out = {
        "generated_by": "scripts/reference/make_text_metrics_fixture.py",
        "versions": {"rouge-score": version("rouge-score")},
        "cases": cases,
    }
    with open("tests/fixtures/text_metrics.json", "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote tests/fixtures/text_metrics.json ({len(cases)} cases)")


if __name__ == "__main__":
    main()
