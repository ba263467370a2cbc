"""Generation tasks and their answer checkers: the verifiable rewards of post-training.

A task file is JSONL, one item per line: `{"id": "…", "prompt": "…", "answer": "…"}` and
optionally `"checker": NAME` (default `exact`). `geowh posttrain` writes such files into
OUT/tasks/ and RLVR rewards a completion by its checker; `geowh ingest --generate TASK.jsonl`
scores completions with the same checker, so the reward trained on and the accuracy measured
are one definition. Torch-free: queries and the warehouse may use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from geowh.errors import InputError

CHECKERS: dict[str, Callable[[str, str], bool]] = {}
"""Checker name → check(completion, answer) -> correct: the registry of verifiable rewards."""


def checker(name: str):
    """Register `check(completion, answer) -> bool` under `name`."""
    def register(fn: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
        CHECKERS[name] = fn
        return fn
    return register


def first_line(completion: str) -> str:
    """The answer part of a completion: up to its first newline, whitespace collapsed. A small model
    keeps generating after its answer; what follows the first line is not graded."""
    return " ".join(completion.strip().split("\n", 1)[0].split())


@checker("exact")
def exact(completion: str, answer: str) -> bool:
    """The completion's first line equals the answer (whitespace collapsed, case kept)."""
    return first_line(completion) == " ".join(answer.split())


@checker("word")
def word(completion: str, answer: str) -> bool:
    """The completion's first word equals the answer: for continuations of running text, which a
    language model does not end with a newline (posttrain's `phrase` task)."""
    words = completion.split()
    return bool(words) and words[0] == answer.strip()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@checker("number")
def number(completion: str, answer: str) -> bool:
    """The first number in the completion's first line equals the answer's number."""
    found = _NUMBER.search(first_line(completion))
    want = _NUMBER.search(answer)
    return bool(found and want) and float(found.group()) == float(want.group())  # type: ignore[union-attr]


@dataclass(frozen=True)
class TaskItem:
    id: str
    prompt: str
    answer: str
    checker: str = "exact"

    def correct(self, completion: str) -> bool:
        return CHECKERS[self.checker](completion, self.answer)


def read_task(path: str | Path) -> list[TaskItem]:
    """The items of a task file; a malformed line or an unknown checker is one clear error."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        raise InputError(f"{path}: a generation task is a .jsonl file with `prompt` and `answer` per line")
    items, seen = [], set()
    for number_, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            item = TaskItem(id=str(raw.get("id", number_)), prompt=raw["prompt"], answer=raw["answer"],
                            checker=raw.get("checker", "exact"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{path}:{number_} is not a JSON object with string `prompt` and `answer`") from None
        if not isinstance(item.prompt, str) or not isinstance(item.answer, str):
            raise InputError(f"{path}:{number_}: `prompt` and `answer` must be strings")
        if item.checker not in CHECKERS:
            raise InputError(f"{path}:{number_}: unknown checker {item.checker!r} (known: {', '.join(CHECKERS)})")
        if item.id in seen:
            raise InputError(f"{path}:{number_}: the id {item.id!r} repeats: give every item its own id")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise InputError(f"{path} holds no items")
    return items
