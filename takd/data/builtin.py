"""The built-in task: a small, deterministic instruction dataset in Dolly's format, for the embedded default.

It is designed from the mechanism MiniLLM argues, so that the embedded default can show it (README, "The
built-in world"):

- **A capacity gap.** The world is a closed set of fictional animals, each with five random facts (colour, legs,
  home, food, sound): 64 animals, 320 facts, nothing to infer. Every answer depends on them, so a model scores by
  what it remembers, and the smallest model (`tiny-s`, 0.18M parameters) learns few of them in its budget (400
  steps of 32 sequences). The larger ones learn most only after leaving a plateau where they answer every animal
  alike, at a step that depends on width and learning rate: in 400 steps the 128-wide assistant (`tiny-m`, 0.75M)
  ends a little below the 192-wide teacher's loss (`tiny-l`, 2.0M), which is why the demo gives the teacher 600
  (benchmarks/RESULTS.md, "The built-in world").
- **Several valid answers.** "Name an animal that lives near the river and describe it" has about eight right
  answers (every river animal), and its reference list holds all of them (Rouge-L takes the best, reference §6).
  Trained by forward KL (SFT, KD), a small model spreads its mass over every river animal and, lacking the
  capacity to hold them all, samples blends (one animal's name with another's legs and food); a mode-seeking
  (reverse-KL) student may answer with the few river animals it knows and describe them consistently.
  "Name an animal that eats fish and describe it" asks the same from the other fact.
- **Answers that are facts.** A description is the name and its five facts ("mira: white, two legs, lake,
  insects, roars.", about 12 tokens), no sentence template around them: Rouge-L then measures knowledge (a
  template-heavy answer gave every model ~53 whatever it knew), and a wrong early fact in a free-running
  generation pulls the later ones after it (exposure bias).
- **Learnable classification items.** Two-way choices about a fact ("Is the kalo red or blue?", "Does the kalo
  eat fish or seeds?"), answered with the fact itself, score above chance exactly as far as the model knows the
  facts, so ECE and accuracy separate the models instead of sitting at chance. (A yes/no form sat at chance for
  every model, the teacher included: it needs a comparison on top of the recall.)

Nothing here was tuned on a method's score: the sizes follow from the capacity argument above and were checked
only for the gap (teacher > assistant > student init after SFT).

Each row has the Dolly fields `instruction`, `input`, `output` (reference §6) and a `task` name; `output` is
a list of every valid answer for the open questions (the training target is its first item, a random valid one).
Rows with `labels` are classification-as-generation items (the answer is one of the label words).
Everything is a pure function of the seed: the same seed gives byte-identical data on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SYLLABLES = ["ka", "lo", "mi", "zu", "ve", "ra", "to", "ni", "sa", "pe", "qu", "do", "fe", "gi", "ha", "ju",
             "ma", "no", "ri", "te", "wa", "yo", "be", "ci"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey"]
LEGS = ["two", "four", "six", "eight"]
HOMES = ["river", "forest", "desert", "mountain", "lake", "field", "cave", "island"]
FOODS = ["fish", "seeds", "leaves", "berries", "insects", "grass", "roots", "fruit"]
SOUNDS = ["hums", "barks", "sings", "hisses", "clicks", "roars", "whistles", "purrs"]
N_ANIMALS = 64     # 320 facts: more than tiny-s learns in its budget, about what tiny-l does (module docstring)
WORLD_SEED = 1234  # the world's facts are fixed; the split seed only changes which questions are asked


def build_world(n_animals: int = N_ANIMALS) -> dict[str, dict[str, str]]:
    """Fixed fictional facts: {animal name: {colour, legs, home, food, sound}}. Homes and foods are dealt
    evenly (every home has n/8 animals), so every open question has the same number of valid answers."""
    rng = random.Random(WORLD_SEED)
    names: list[str] = []
    while len(names) < n_animals:
        w = rng.choice(SYLLABLES) + rng.choice(SYLLABLES)
        if w not in names:
            names.append(w)
    homes = [HOMES[i % len(HOMES)] for i in range(n_animals)]
    foods = [FOODS[i % len(FOODS)] for i in range(n_animals)]
    rng.shuffle(homes)
    rng.shuffle(foods)
    return {name: {"colour": rng.choice(COLOURS), "legs": rng.choice(LEGS), "home": home, "food": food,
                   "sound": rng.choice(SOUNDS)}
            for name, home, food in zip(names, homes, foods, strict=True)}


def describe(name: str, facts: dict[str, str]) -> str:
    """The one description every describing task answers with: the name and its five facts, nothing else
    (about 12 tokens), so Rouge-L measures what a model knows, not how well it copies a sentence template."""
    return f"{name}: {facts['colour']}, {facts['legs']} legs, {facts['home']}, {facts['food']}, {facts['sound']}."


def _row(instruction: str, inp: str, output: str | list[str], task: str, labels: list[str] | None = None) -> dict:
    row = {"instruction": instruction, "input": inp, "output": output, "task": task}
    if labels:
        row["labels"] = labels
    return row


def _valid_first(rng: random.Random, answers: list[str]) -> list[str]:
    """All valid answers, a random one first (the SFT target; evaluation takes the best of them all)."""
    first = rng.randrange(len(answers))
    return [answers[first]] + answers[:first] + answers[first + 1:]


def _describe(rng: random.Random, world: dict) -> dict:
    name = rng.choice(sorted(world))
    return _row("Describe the animal.", name, describe(name, world[name]), "describe")


def _name_by_home(rng: random.Random, world: dict) -> dict:
    home = rng.choice(HOMES)
    answers = [describe(n, f) for n, f in sorted(world.items()) if f["home"] == home]
    return _row(f"Name an animal that lives near the {home} and describe it.", "", _valid_first(rng, answers),
                "name-home")


def _name_by_food(rng: random.Random, world: dict) -> dict:
    food = rng.choice(FOODS)
    answers = [describe(n, f) for n, f in sorted(world.items()) if f["food"] == food]
    return _row(f"Name an animal that eats {food} and describe it.", "", _valid_first(rng, answers), "name-food")


def _home(rng: random.Random, world: dict) -> dict:
    name = rng.choice(sorted(world))
    f = world[name]
    return _row(f"Where does the {name} live and what does it eat?", "", f"{f['home']}, {f['food']}.", "home")


def _choice(rng: random.Random, world: dict, fact: str, values: list[str], question: str) -> dict:
    """A two-way choice about one fact, answered with the fact itself: right exactly when the model recalls it.
    (A yes/no form, "Is the kalo red?", needs the stored colour compared with the asked one as well: every model,
    the teacher included, stayed near chance on it.)"""
    name = rng.choice(sorted(world))
    truth = world[name][fact]
    options = [truth, rng.choice([x for x in values if x != truth])]
    rng.shuffle(options)
    return _row(question.format(name=name, a=options[0], b=options[1]), "", truth, fact, labels=options)


def _colour_choice(rng: random.Random, world: dict) -> dict:
    return _choice(rng, world, "colour", COLOURS, "Is the {name} {a} or {b}? Answer with one word.")


def _food_choice(rng: random.Random, world: dict) -> dict:
    return _choice(rng, world, "food", FOODS, "Does the {name} eat {a} or {b}? Answer with one word.")


TASKS: dict[str, Callable[[random.Random, dict], dict]] = {
    "describe": _describe, "name-home": _name_by_home, "name-food": _name_by_food, "home": _home,
    "colour": _colour_choice, "food": _food_choice,
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
    """Plain-text documents stating the world's facts, for the PT loss (the OpenWebText stand-in) when a stage asks
    for `pt_dataset=builtin`; the embedded default itself runs without L_PT (README, "The built-in world")."""
    world = build_world()
    rng = random.Random(f"{seed}-corpus")
    names = sorted(world)
    return [" ".join(describe(n, world[n]) for n in rng.sample(names, rng.randint(2, 5))) for _ in range(n_docs)]
