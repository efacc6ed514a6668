"""The built-in task: a small, deterministic instruction dataset in Dolly's format, for the embedded default.

A fictional world (countries with capitals, animals with colours, homes and sounds) plus string and number
tasks. Responses range from exact one-word answers to templated sentences, so Rouge-L gives partial credit
and a larger model that memorises the world's facts scores visibly higher than a smaller one.

Each row has the Dolly fields `instruction`, `input`, `output` (reference §6) and a `task` name. Rows with
`labels` are classification-as-generation items (the answer is one of the label words) for calibration.
Everything is a pure function of the seed: the same seed gives byte-identical data on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SYLLABLES = ["ka", "lo", "mi", "zu", "ve", "ra", "to", "ni", "sa", "pe", "qu", "do", "fe", "gi", "ha", "ju",
             "ma", "no", "ri", "te", "wa", "yo", "be", "ci"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "purple"]
HOMES = ["river", "forest", "desert", "mountain", "lake", "field", "cave", "island"]
SOUNDS = ["hums", "barks", "sings", "hisses", "clicks", "roars", "whistles", "purrs"]
LEGS = ["two", "four", "six", "eight"]
WORLD_SEED = 1234  # the world's facts are fixed; the split seed only changes which questions are asked


def _word(rng: random.Random, n_syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n_syllables))


def build_world(n_countries: int = 24, n_animals: int = 24) -> dict:
    """Fixed fictional facts: {'countries': {name: capital}, 'animals': {name: {colour, home, sound, legs}}}."""
    rng = random.Random(WORLD_SEED)
    names: set[str] = set()

    def fresh(n: int) -> str:
        while True:
            w = _word(rng, n)
            if w not in names:
                names.add(w)
                return w

    countries = {fresh(3).capitalize(): fresh(2).capitalize() for _ in range(n_countries)}
    animals = {
        fresh(2): {"colour": rng.choice(COLOURS), "home": rng.choice(HOMES),
                   "sound": rng.choice(SOUNDS), "legs": rng.choice(LEGS)}
        for _ in range(n_animals)
    }
    return {"countries": countries, "animals": animals}


def _row(instruction: str, inp: str, output: str, task: str, labels: list[str] | None = None) -> dict:
    row = {"instruction": instruction, "input": inp, "output": output, "task": task}
    if labels:
        row["labels"] = labels
    return row


def _capital(rng: random.Random, world: dict) -> dict:
    country = rng.choice(sorted(world["countries"]))
    cap = world["countries"][country]
    return _row(f"What is the capital of {country}?", "", f"The capital of {country} is {cap}.", "capital")


def _describe(rng: random.Random, world: dict) -> dict:
    name = rng.choice(sorted(world["animals"]))
    a = world["animals"][name]
    out = (f"The {name} is a {a['colour']} animal with {a['legs']} legs. "
           f"It lives near the {a['home']} and it {a['sound']}.")
    return _row("Describe the animal.", name, out, "describe")


def _animal_home(rng: random.Random, world: dict) -> dict:
    name = rng.choice(sorted(world["animals"]))
    return _row(f"Where does the {name} live?", "", f"The {name} lives near the {world['animals'][name]['home']}.",
                "home")


def _reverse(rng: random.Random, world: dict) -> dict:
    w = _word(rng, rng.randint(2, 3))
    return _row("Reverse the letters of the word.", w, w[::-1], "reverse")


def _uppercase(rng: random.Random, world: dict) -> dict:
    words = " ".join(_word(rng, 2) for _ in range(rng.randint(2, 3)))
    return _row("Rewrite the text in capital letters.", words, words.upper(), "uppercase")


def _add(rng: random.Random, world: dict) -> dict:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return _row("Add the two numbers.", f"{a} and {b}", f"{a} plus {b} is {a + b}.", "add")


def _sort(rng: random.Random, world: dict) -> dict:
    xs = rng.sample(range(1, 30), rng.randint(3, 4))
    return _row("Sort the numbers from smallest to largest.", ", ".join(map(str, xs)),
                ", ".join(map(str, sorted(xs))), "sort")


def _parity(rng: random.Random, world: dict) -> dict:
    n = rng.randint(0, 99)
    return _row("Is the number even or odd? Answer with one word.", str(n), "even" if n % 2 == 0 else "odd",
                "parity", labels=["even", "odd"])


def _colour_question(rng: random.Random, world: dict) -> dict:
    name = rng.choice(sorted(world["animals"]))
    colour = world["animals"][name]["colour"]
    other = rng.choice([c for c in COLOURS if c != colour])
    asked = rng.choice([colour, other])
    answer = "yes" if asked == colour else "no"
    return _row(f"Is the {name} {asked}? Answer yes or no.", "", answer, "colour", labels=["yes", "no"])


TASKS: dict[str, Callable[[random.Random, dict], dict]] = {
    "capital": _capital, "describe": _describe, "home": _animal_home, "reverse": _reverse,
    "uppercase": _uppercase, "add": _add, "sort": _sort, "parity": _parity, "colour": _colour_question,
}
SPLIT_SIZES = {"train": 3000, "valid": 200, "test": 200}  # rows


def generate_split(split: str, seed: int = 0, n: int | None = None) -> list[dict]:
    """Rows of one split. Splits use disjoint RNG streams; tasks are drawn uniformly."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    world = build_world()
    rng = random.Random(f"{seed}-{split}")
    names = sorted(TASKS)
    return [TASKS[rng.choice(names)](rng, world) for _ in range(n if n is not None else SPLIT_SIZES[split])]


def pretraining_corpus(n_docs: int = 2000, seed: int = 0) -> list[str]:
    """Plain-text documents stating the world's facts, for the PT loss (the OpenWebText stand-in)."""
    world = build_world()
    rng = random.Random(f"{seed}-corpus")
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                c = rng.choice(sorted(world["countries"]))
                sentences.append(f"{c} is a country and its capital is {world['countries'][c]}.")
            else:
                name = rng.choice(sorted(world["animals"]))
                a = world["animals"][name]
                sentences.append(f"The {name} is {a['colour']}, has {a['legs']} legs and {a['sound']} "
                                 f"near the {a['home']}.")
        docs.append(" ".join(sentences))
    return docs
