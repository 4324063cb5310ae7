"""General instructions with checkable answers: the regression set a run measures the base
and tuned model on (did fine-tuning cost what the base already did?), and general data to
mix into task training (data.weights) against forgetting.

Writes examples/data/general-regression.jsonl (60) and examples/data/general-train.jsonl
(the other 237) in the messages layout, no question in both, deterministically:
    python3 scripts/make_general_data.py
"""

import json
import random

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("India", "New Delhi"), ("China", "Beijing"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Russia", "Moscow"), ("Turkey", "Ankara"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
    ("Cuba", "Havana"), ("Belgium", "Brussels"), ("Czechia", "Prague"), ("Iceland", "Reykjavik"), ("Morocco", "Rabat"),
    ("Colombia", "Bogota"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Indonesia", "Jakarta"), ("South Korea", "Seoul"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
    ("open", "closed"), ("full", "empty"), ("high", "low"), ("strong", "weak"), ("old", "young"), ("wet", "dry"),
    ("loud", "quiet"), ("rich", "poor"), ("hard", "soft"), ("thick", "thin"), ("clean", "dirty"), ("near", "far"),
    ("begin", "end"), ("buy", "sell"), ("win", "lose"), ("push", "pull"), ("above", "below"), ("inside", "outside"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("tooth", "teeth"), ("foot", "feet"), ("goose", "geese"), ("man", "men"),
    ("woman", "women"), ("person", "people"), ("leaf", "leaves"), ("knife", "knives"), ("wolf", "wolves"), ("city", "cities"),
    ("box", "boxes"), ("bus", "buses"), ("hero", "heroes"), ("baby", "babies"), ("sheep", "sheep"), ("fish", "fish"),
    ("cactus", "cacti"), ("crisis", "crises"), ("analysis", "analyses"), ("ox", "oxen"), ("life", "lives"), ("party", "parties"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS = ["garden", "planet", "window", "river", "computer", "bicycle", "orange", "mountain", "library", "kitchen",
         "pencil", "thunder", "blanket", "holiday", "teacher", "journey", "elephant", "umbrella", "chocolate", "language"]


def questions():
    """Every (question, answer) pair the generator can make, in a fixed order."""
    q = []
    for country, city in CAPITALS:
        q.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for a, b in OPPOSITES:
        q.append((f"What is the opposite of \"{a}\"?", f"The opposite of \"{a}\" is \"{b}\"."))
    for one, many in PLURALS:
        q.append((f"What is the plural of \"{one}\"?", f"The plural of \"{one}\" is \"{many}\"."))
    for i, d in enumerate(DAYS):
        q.append((f"Which day of the week comes after {d}?", f"{DAYS[(i + 1) % 7]} comes after {d}."))
        q.append((f"Which day of the week comes before {d}?", f"{DAYS[(i - 1) % 7]} comes before {d}."))
    for w in WORDS:
        q.append((f"How many letters are in the word \"{w}\"?", f"The word \"{w}\" has {len(w)} letters."))
        q.append((f"Spell \"{w}\" backwards.", f"\"{w}\" backwards is \"{w[::-1]}\"."))
    rng = random.Random(7)
    for _ in range(80):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        q.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    for _ in range(40):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    for h in range(2, 13):
        q.append((f"How many minutes are there in {h} hours?", f"There are {h * 60} minutes in {h} hours."))
    for _ in range(30):
        xs = rng.sample(range(1, 100), 4)
        q.append((f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}.",
                  ", ".join(map(str, sorted(xs))) + "."))
    # Distinct questions only.
    seen, out = set(), []
    for question, answer in q:
        if question not in seen:
            seen.add(question)
            out.append((question, answer))
    return out


def write(path, pairs):
    with open(path, "w") as f:
        for question, answer in pairs:
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    print(f"wrote {path} ({len(pairs)} examples)")


def main():
    pairs = questions()
    random.Random(11).shuffle(pairs)
    write("examples/data/general-regression.jsonl", pairs[:60])
    write("examples/data/general-train.jsonl", pairs[60:])


if __name__ == "__main__":
    main()
