"""QA tasks for memorization: the `TASKS` registry (a hub dataset and how its items read) and local files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from geowh.errors import InputError


@dataclass(frozen=True)
class QAItem:
    item: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        question = self.question.strip()
        return f"Question: {question}{'' if question.endswith('?') else '?'} Answer:"

    @property
    def target(self) -> str:
        return " " + self.answer.strip()


@dataclass(frozen=True)
class Task:
    """A registry entry: a hub QA dataset."""

    name: str
    dataset: str
    config: str
    split: str
    description: str
    load: Callable[[Task], list[QAItem]]


def _triviaqa(task: Task) -> list[QAItem]:
    from geowh.ingest.sources.series import require_hub

    require_hub(f"load the task {task.dataset}")
    try:
        from datasets import load_dataset

        rows = load_dataset(task.dataset, task.config, split=task.split)
        rows = rows.select_columns(["question_id", "question", "answer"])
    except Exception as e:  # offline, missing cache, hub errors: many types
        raise InputError(
            f"cannot load {task.dataset} ({task.config}, {task.split}): {str(e).splitlines()[0][:300]}; "
            "connect to the hub once (it is cached afterwards) or give a local .jsonl with question and answer"
        ) from None
    items, seen = [], set()
    for row in rows:
        if row["question_id"] in seen:
            continue
        seen.add(row["question_id"])
        items.append(QAItem(str(row["question_id"]), row["question"], row["answer"]["value"]))
    return items


TASKS: dict[str, Task] = {
    "triviaqa": Task(
        "triviaqa", "mandarjoshi/trivia_qa", "rc", "validation",
        "TriviaQA reading-comprehension validation questions (the paper's task)", _triviaqa,
    ),
}


def load_task(task: str, limit: int | None = None) -> tuple[str, list[QAItem]]:
    """(task key, items) for a registry name or a local .jsonl with `question` and `answer`.

    A local file's key is `{stem}-{first 12 hex digits of its sha256}`, so a changed file never
    reuses another's cached ∞-gram rows. `limit` keeps the first N items.
    """
    # items[:-1] would quietly drop the last item: a limit is a count of items, ≥ 1
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit {limit}: give a whole number of items, at least 1 (or leave it out for all)")
    if task in TASKS:
        key, items = task, TASKS[task].load(TASKS[task])
    else:
        path = Path(task)
        if not path.is_file():
            raise InputError(
                f"unknown QA task {task!r}: use {', '.join(TASKS)} or a .jsonl file with question and answer fields"
            )
        key, items = local_task(path)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(f"the task {task} has no items")
    return key, items


def local_task(path: Path) -> tuple[str, list[QAItem]]:
    raw = path.read_bytes()
    items = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answer = row["question"], row["answer"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number} is not a JSON object with question and answer fields") from None
        if isinstance(answer, dict):
            answer = answer.get("value")
        elif isinstance(answer, list):
            answer = answer[0] if answer else None
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            raise InputError(f"{path}:{number}: question and answer must be non-empty text")
        item = row.get("id", row.get("question_id", f"L{number}"))
        items.append(QAItem(str(item), question, answer))
    ids = [i.item for i in items]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: item ids repeat; give each line a unique `id` (or none, to number them by line)")
    return f"{path.stem}-{hashlib.sha256(raw).hexdigest()[:12]}", items
