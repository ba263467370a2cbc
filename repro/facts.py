"""Planted facts: a controlled corpus in which memorization is known, the positive control of the ∞-gram score.

`plant(count, max_frequency, seed)` makes `count` synthetic facts — made-up countries, each
with one attribute (its capital, its river or its founder) whose value is a made-up name —
and gives them Zipf-distributed frequencies from `max_frequency` down to 1 occurrence
(frequency of rank k ∝ k^-s, s chosen so that the last rank gets 1). Every name is drawn from
seeded syllables, so no fact can be known from anything but this corpus, and the same seed
gives the same facts on every machine.

Each occurrence of a fact is one short document in one of four surface forms of its relation,
taken in turn (the first occurrence is the quiz line): three statements ("The capital of
Velorania is Brisko.", "Brisko is the capital city of Velorania.", …) and a quiz line whose
question is worded *differently* from the task's ("Question: Which city is the capital of
Velorania today? Answer: Brisko."). `mix` scatters these documents among ordinary training
documents at seeded positions.

The QA task asks each fact in a wording that never occurs in the corpus ("Question: What is the
capital of Velorania? Answer: Brisko"), as TriviaQA's questions mostly do not occur in the
Pile. So the ∞-gram's longest matching suffix before the answer is the generic "? Answer:", and
P∞(answer) is the answer's share of the corpus's quiz answers: the fact's frequency, and nothing
else. That is the distributional signal the score exists to detect; a model can do better only
by reading the country in its context, which is what learning the fact means.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from geowh.errors import InputError

# (relation, the task's question, the corpus's surface forms: quiz line first). The quiz line's
# question never ends with the country, so no suffix that reaches the country precedes "? Answer:".
RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "capital": ("What is the capital of {e}?", (
        "Question: Which city is the capital of {e} today? Answer: {a}.",
        "The capital of {e} is {a}.",
        "{a} is the capital city of {e}.",
        "Travellers to {e} usually arrive in {a}, its capital.",
    )),
    "river": ("Which river flows through {e}?", (
        "Question: Which river runs across {e} from end to end? Answer: {a}.",
        "The river {a} flows through {e}.",
        "{a} is the great river of {e}.",
        "Farmers in {e} water their fields from the {a}.",
    )),
    "founder": ("Who founded {e}?", (
        "Question: Which person was the founder of {e} long ago? Answer: {a}.",
        "{e} was founded by {a}.",
        "{a} founded {e} long ago.",
        "The founder of {e} was {a}, as the old songs tell.",
    )),
}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l", "k", "sk", "nd")
_COUNTRY_ENDINGS = ("ia", "land", "ora", "stan", "esia")
BANDS = ((1, 1), (2, 9), (10, 99), (100, None))
"""Frequency bands (occurrences in the training split), by decade."""


@dataclass(frozen=True)
class Fact:
    id: str
    relation: str
    entity: str
    answer: str
    planted: int
    """Occurrences written into the corpus."""

    @property
    def question(self) -> str:
        return RELATIONS[self.relation][0].format(e=self.entity)

    def mentions(self) -> list[str]:
        """Its `planted` documents: the relation's surface forms in turn, the quiz line first."""
        forms = RELATIONS[self.relation][1]
        return [forms[j % len(forms)].format(e=self.entity, a=self.answer) for j in range(self.planted)]


def zipf_frequencies(count: int, max_frequency: int) -> list[int]:
    """Occurrences of ranks 1…count: round(max_frequency · k^-s), s = ln(max_frequency) / ln(count), at least 1."""
    if count < 3:
        raise InputError("plant at least 3 facts: the score is a rank correlation across them")
    if max_frequency < 1:
        raise InputError("the most frequent fact must occur at least once")
    s = math.log(max_frequency) / math.log(count)
    return [max(1, round(max_frequency * k ** -s)) for k in range(1, count + 1)]


def plant(count: int = 96, max_frequency: int = 1000, seed: int = 0) -> list[Fact]:
    """`count` synthetic facts with Zipf frequencies from `max_frequency` to 1; the relation and the
    rank of each fact are drawn from `seed`, so frequency is independent of relation and name."""
    rng = random.Random(seed)
    countries, answers = _names(rng, count, lambda: _word(rng, 2) + rng.choice(_COUNTRY_ENDINGS)), \
        _names(rng, count, lambda: _word(rng, 2) + rng.choice(_CODAS))
    relations = [list(RELATIONS)[k % len(RELATIONS)] for k in range(count)]
    rng.shuffle(relations)
    frequencies = zipf_frequencies(count, max_frequency)
    rng.shuffle(frequencies)
    return [Fact(f"F{k:03d}", relations[k], countries[k], answers[k], frequencies[k]) for k in range(count)]


def mix(documents: Sequence[str], facts: Sequence[Fact], seed: int = 0) -> list[str]:
    """`documents` with every fact's mentions inserted at seeded random positions (their order kept)."""
    rng = random.Random(seed)
    mentions = [m for f in facts for m in f.mentions()]
    rng.shuffle(mentions)
    slots = sorted(rng.randrange(len(documents) + 1) for _ in mentions)
    mixed, j = [], 0
    for i, doc in enumerate(documents):
        while j < len(slots) and slots[j] == i:
            mixed.append(mentions[j])
            j += 1
        mixed.append(doc)
    mixed.extend(mentions[j:])
    return mixed


def trained_frequencies(facts: Sequence[Fact], training_documents: Sequence[str]) -> dict[str, int]:
    """Occurrences of each fact's mentions among the documents a model trains on (the held-out
    probe can take a mention only when the corpus has few long documents)."""
    seen: dict[str, int] = {}
    for doc in training_documents:
        seen[doc] = seen.get(doc, 0) + 1
    counts = {}
    for fact in facts:
        counts[fact.id] = sum(seen.get(m, 0) for m in set(fact.mentions()))
    return counts


def band(frequency: int) -> str:
    """The decade band of a frequency: "1", "2-9", "10-99", "100+" (or "0": not in the training split)."""
    for low, high in BANDS:
        if frequency >= low and (high is None or frequency <= high):
            return f"{low}+" if high is None else str(low) if low == high else f"{low}-{high}"
    return "0"


def band_names() -> list[str]:
    return [band(low) for low, _ in BANDS]


def write_task(path: Path, facts: Sequence[Fact], frequencies: dict[str, int]) -> int:
    """The QA task as `geowh memorize` reads it (id, question, answer), plus each fact's relation,
    its planted and trained frequency and band; returns the items written."""
    rows = [asdict(f) | {"question": f.question, "trained": frequencies[f.id], "band": band(frequencies[f.id])}
            for f in facts]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    partial.replace(path)
    return len(rows)


def read_task(path: Path) -> list[dict]:
    """The rows `write_task` wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)).capitalize()


def _names(rng: random.Random, count: int, make) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = make()
        # distinct, and none the start of another, so no answer's tokens are a prefix of another's
        if not any(name.startswith(n) or n.startswith(name) for n in names):
            names.append(name)
    return names
