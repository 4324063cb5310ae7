#!/usr/bin/env python3
"""Score calendar-event predictions against reference conversations.

    python3 scripts/score_calendar.py REFS.jsonl PREDS.jsonl [--lenient] [--json OUT.json]
    python3 scripts/score_calendar.py --self-test [REFS.jsonl]

REFS.jsonl: {"messages": [...]} lines (e.g. examples/data/calendar-eval.jsonl); the reference
answer is the last assistant message, a JSON object with keys title, day, time, location.
PREDS.jsonl: one {"prediction": "<model text>"} line per reference line, in the same order.

Reports, over all examples:
  valid        prediction parses as a JSON object with exactly the keys title, day, time,
               location (any order)
  <key>        the prediction parses as a JSON object and its value for <key> equals the
               reference's exactly (strings are case-sensitive; null matches only null)
  exact        valid and all four keys match

By default the prediction text must be JSON on its own (surrounding whitespace is ignored),
as the system prompt asks. --lenient also accepts a ```/```json fence around it or prose
around the object: it parses the text from the first "{" to the last "}".

--self-test scores REFS (default examples/data/calendar-eval.jsonl) against itself
(must give 1.0 everywhere) and against a corrupted copy (must score below 1.0, with the
expected counts), and exits non-zero if either check fails. Standard library only.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

KEYS = ("title", "day", "time", "location")


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}")
    return rows


def reference_answer(row, where):
    try:
        msgs = row["messages"]
        content = [m["content"] for m in msgs if m.get("role") == "assistant"][-1]
        ans = json.loads(content)
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{where}: no assistant JSON answer in the reference ({e!r})")
    if not isinstance(ans, dict) or set(ans) != set(KEYS):
        raise SystemExit(f"{where}: reference answer does not have exactly the keys {KEYS}")
    return ans


def parse_prediction(text, lenient=False):
    """The prediction as a dict, or None when it is not a JSON object."""
    if not isinstance(text, str):
        return None
    s = text.strip()
    candidates = [s]
    if lenient:
        if s.startswith("```"):
            body = s[3:]
            if body.startswith("json"):
                body = body[4:]
            candidates.append(body.rsplit("```", 1)[0].strip())
        i, j = s.find("{"), s.rfind("}")
        if 0 <= i < j:
            candidates.append(s[i:j + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def score(refs, preds, lenient=False):
    """refs: list of answer dicts; preds: list of prediction strings (or None)."""
    n = len(refs)
    counts = {"valid": 0, "exact": 0, **{k: 0 for k in KEYS}}
    for ref, text in zip(refs, preds):
        obj = parse_prediction(text, lenient)
        if obj is None:
            continue
        valid = set(obj) == set(KEYS)
        counts["valid"] += valid
        matches = [k in obj and obj[k] == ref[k] and type(obj[k]) is type(ref[k]) for k in KEYS]
        for k, ok in zip(KEYS, matches):
            counts[k] += ok
        counts["exact"] += valid and all(matches)
    return {"n": n, "counts": counts,
            "rates": {k: (v / n if n else 0.0) for k, v in counts.items()}}


def load_and_score(refs_path, preds_path, lenient=False):
    ref_rows = read_jsonl(refs_path)
    refs = [reference_answer(r, f"{refs_path} record {i}") for i, r in enumerate(ref_rows, 1)]
    pred_rows = read_jsonl(preds_path)
    if len(pred_rows) != len(refs):
        raise SystemExit(f"{preds_path}: {len(pred_rows)} predictions for {len(refs)} references")
    preds = []
    for i, p in enumerate(pred_rows, 1):
        if not isinstance(p, dict) or "prediction" not in p:
            raise SystemExit(f"{preds_path} record {i}: expected {{\"prediction\": ...}}")
        preds.append(p["prediction"])
    return score(refs, preds, lenient)


def report(result, out=sys.stdout):
    n = result["n"]
    print(f"examples: {n}", file=out)
    for k in ("valid",) + KEYS + ("exact",):
        c = result["counts"][k]
        print(f"  {k:<9} {c:>5}/{n}  {100 * result['rates'][k]:6.2f}%", file=out)


def write_preds(path, texts):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(json.dumps({"prediction": t}, ensure_ascii=False) + "\n")


def corrupt(answers):
    """Predictions derived from the references with known defects, and the expected counts.

    Cycle of 8: 0 unchanged, 1 time off by a minute, 2 location changed (null <-> text),
    3 title lower-cased (changed only if it has upper case), 4 missing key location,
    5 extra key, 6 not JSON, 7 the right JSON in a ```json fence (valid only with --lenient).
    """
    texts = []
    n = len(answers)
    exp = {"valid": 0, "exact": 0, **{k: 0 for k in KEYS}}
    exp_lenient = dict(exp)
    for i, a in enumerate(answers):
        b = dict(a)
        kind = i % 8
        plain = True
        if kind == 1:
            h, m = map(int, a["time"].split(":"))
            b["time"] = f"{h:02d}:{(m + 1) % 60:02d}"
        elif kind == 2:
            b["location"] = "somewhere" if a["location"] is None else None
        elif kind == 3:
            b["title"] = a["title"].lower()
        elif kind == 4:
            del b["location"]
        elif kind == 5:
            b["notes"] = ""
        text = json.dumps(b, ensure_ascii=False)
        if kind == 6:
            text = text[:-1]  # truncated: not JSON
            plain = False
        elif kind == 7:
            text = "```json\n" + text + "\n```"
            plain = False
        texts.append(text)
        # Expected outcome for this line.
        for e, lenient in ((exp, False), (exp_lenient, True)):
            parsed = plain or (lenient and kind == 7)
            if not parsed:
                continue
            valid = set(b) == set(KEYS)
            e["valid"] += valid
            ok = {k: k in b and b[k] == a[k] for k in KEYS}
            for k in KEYS:
                e[k] += ok[k]
            e["exact"] += valid and all(ok.values())
    assert n >= 8
    return texts, exp, exp_lenient


def self_test(refs_path):
    ref_rows = read_jsonl(refs_path)
    answers = [reference_answer(r, f"{refs_path} record {i}") for i, r in enumerate(ref_rows, 1)]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        same = os.path.join(tmp, "same.jsonl")
        write_preds(same, [r["messages"][-1]["content"] for r in ref_rows])
        res = load_and_score(refs_path, same)
        print("references vs themselves:")
        report(res)
        if any(v != 1.0 for v in res["rates"].values()):
            failures.append("references against themselves do not score 100%")

        bad = os.path.join(tmp, "corrupted.jsonl")
        texts, exp, exp_lenient = corrupt(answers)
        write_preds(bad, texts)
        for lenient, expected in ((False, exp), (True, exp_lenient)):
            res = load_and_score(refs_path, bad, lenient)
            print(f"references vs a corrupted copy{' (--lenient)' if lenient else ''}:")
            report(res)
            if res["rates"]["exact"] >= 1.0 or res["rates"]["valid"] >= 1.0:
                failures.append(f"corrupted copy scores 100% (lenient={lenient})")
            if res["counts"] != expected:
                failures.append(f"corrupted copy (lenient={lenient}): counts {res['counts']} "
                                f"!= expected {expected}")
    for f in failures:
        print(f"SELF-TEST FAILED: {f}", file=sys.stderr)
    if not failures:
        print("self-test passed")
    return 1 if failures else 0


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("refs", nargs="?", help="reference conversations (JSONL)")
    ap.add_argument("preds", nargs="?", help='predictions (JSONL of {"prediction": ...})')
    ap.add_argument("--lenient", action="store_true",
                    help="accept a code fence or text around the JSON object")
    ap.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    ap.add_argument("--self-test", action="store_true",
                    help="check the scorer on REFS (default examples/data/calendar-eval.jsonl)")
    args = ap.parse_args()

    if args.self_test:
        if args.preds:
            ap.error("--self-test takes at most one file (the references)")
        sys.exit(self_test(args.refs or root / "examples" / "data" / "calendar-eval.jsonl"))
    if not (args.refs and args.preds):
        ap.error("give REFS.jsonl and PREDS.jsonl, or --self-test")
    res = load_and_score(args.refs, args.preds, args.lenient)
    report(res)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"refs": str(args.refs), "preds": str(args.preds), "lenient": args.lenient,
                       **res}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
