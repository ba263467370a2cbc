"""`geowh import-evals`: lm-evaluation-harness results files into the `evals` table.

Two layouts exist. The old one (harness ≤ 0.3, the Pythia files) is
`{"results": {task: {"acc": v, "acc_stderr": s}}, "versions": {...}, "config": {"model_args": ..., "num_fewshot": k}}`.
The current one (0.4+, `results_<date>.json`) keys metrics as `acc,none` / `acc_stderr,none`
(metric, filter), gives the few-shot count per task in `n-shot` and the model in `config.model_args`.
The model and the checkpoint are read from `model_args` (`pretrained=…,revision=step143000`),
never from the file name: the Pythia file names are not reliable (see SOURCE.md of the data).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from geowh.errors import InputError
from geowh.queries.imports import file_digest, import_key, import_run, imported_keys, new_models
from geowh.warehouse import Warehouse, canonical_model, utcnow
from geowh.warehouse.names import PYTHIA_TOKENS_PER_STEP, local_step, parse_step, parse_tokens

# Names in `pretrained=` that are not the warehouse's model name: (pattern, replacement), in order.
MODEL_RENAMES = (
    (re.compile(r"^pythia-v1\.1-"), "pythia-"),  # EleutherAI/pythia-v1.1-410m is pythia-410m
    (re.compile(r"^pythia-1b-bf16$"), "pythia-1b"),  # the Pythia 1B run, evaluated in bfloat16
)
# Keys of a task's results that describe it rather than score it (the current layout's task name).
NOT_METRICS = {"alias"}



@dataclass
class EvalFile:
    """One results file, parsed: which checkpoint it evaluated and its (task, metric) rows."""

    path: Path
    format: str
    model: str
    checkpoint: str
    step: int | None
    tokens: float | None
    harness_version: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def eval_model_name(pretrained: str) -> str:
    """`EleutherAI/pythia-v1.1-410m` → `pythia-410m`; a local path → its folder name."""
    name = pretrained.rstrip("/").split("/")[-1].lower()
    if local_step(name) is not None and "/" in pretrained.rstrip("/"):  # …/my-run/step1000: the run is the parent folder
        name = pretrained.rstrip("/").split("/")[-2].lower()
    for pattern, replacement in MODEL_RENAMES:
        name = pattern.sub(replacement, name)
    return canonical_model(name)


def parse_model_args(args: Any) -> dict[str, str]:
    """`pretrained=EleutherAI/x,revision=step1` (or the dict newer harnesses write) as a dict."""
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    if not isinstance(args, str):
        return {}
    parsed = {}
    for part in args.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            parsed[key.strip()] = value.strip()
    return parsed


def results_format(data: Any) -> str | None:
    """`old`, `new` or None (not an lm-eval results file)."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        return None
    results = data["results"]
    if not all(isinstance(v, dict) for v in results.values()):
        return None
    keys = {k for v in results.values() for k in v}
    if "n-shot" in data or "configs" in data or any("," in k for k in keys):
        return "new"
    if isinstance(data.get("config"), dict) and "versions" in data:
        return "old"
    return None


def read_results(path: str | Path, model: str | None = None, checkpoint: str | None = None) -> EvalFile:
    """Parse one lm-evaluation-harness results file (either layout).

    `model` / `checkpoint` override what `config.model_args` says (for local runs whose
    `pretrained=` path does not name them).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a readable JSON file ({e}): pass lm-evaluation-harness results files") from None
    fmt = results_format(data)
    if fmt is None:
        raise InputError(
            f"{path} is not an lm-evaluation-harness results file: expected `results` with per-task "
            "metrics and either `config`/`versions` (old layout) or `n-shot`/`configs` (current layout)"
        )
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    args = parse_model_args(config.get("model_args"))
    pretrained = args.get("pretrained") or data.get("model_name") or ""
    if model is None and not pretrained:
        raise InputError(f"{path}: config.model_args names no pretrained= model; pass --model NAME")
    name = canonical_model(model) if model else eval_model_name(pretrained)
    revision = args.get("revision")
    step = parse_step(revision or "")
    step = parse_step(pretrained) if step is None else step
    label = checkpoint or (revision if revision and revision != "main" else None) or (f"step{step}" if step is not None else None)
    if label is None:
        raise InputError(f"{path}: model_args names no revision=stepN and no step; pass --checkpoint LABEL")
    if checkpoint and (own := parse_step(checkpoint)) is not None:
        step = own
    tokens = parse_tokens(label)
    if tokens is None and name.startswith("pythia-") and step is not None:
        tokens = float(step * PYTHIA_TOKENS_PER_STEP)
    version = (data.get("lm_eval_version") or data.get("git_hash")) if fmt == "new" else None
    default_shots = config.get("num_fewshot")
    shots_by_task = data.get("n-shot") or {}
    configs = data.get("configs") or {}
    rows = []
    for task, values in data["results"].items():
        shots = shots_by_task.get(task, (configs.get(task) or {}).get("num_fewshot", default_shots))
        shots = int(shots) if isinstance(shots, (int, float)) and not isinstance(shots, bool) else 0
        for key, value in values.items():
            metric, _, filter_ = key.partition(",")
            if metric.endswith("_stderr") or metric in NOT_METRICS or value is None:
                continue
            stderr_key = f"{metric}_stderr,{filter_}" if filter_ else f"{metric}_stderr"
            stderr = values.get(stderr_key)
            rows.append({
                "task": task, "metric": metric, "filter": filter_ or "none", "num_fewshot": shots,
                "value": _value(path, task, key, value),
                "stderr": None if stderr is None or stderr == "N/A" else _value(path, task, stderr_key, stderr),
            })
    return EvalFile(path, fmt, name, label, step, tokens, str(version) if version else None, rows)


def eval_files(paths: Sequence[str | Path]) -> list[Path]:
    """The .json files named, directories walked (sorted, so imports are deterministic)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*.json") if f.is_file()))
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"no file or directory at {p}")
    if not found:
        raise InputError(f"no .json results files under {', '.join(map(str, paths))}")
    return found


def import_evals(
    wh: Warehouse, paths: Sequence[str | Path], model: str | None = None, checkpoint: str | None = None
) -> pl.DataFrame:
    """Import lm-evaluation-harness results (files or directories, walked) into `evals`.

    Every file is parsed before anything is written; one bad file stops the import with its
    name. Each file becomes one `runs` row of kind `import`; a file already imported (same
    content, same target) is skipped, so importing twice changes nothing.

    Returns one row per (model, num_fewshot): files, checkpoints, tasks, rows, imported (files
    written now), unchanged (files already imported). A file mixing few-shot counts (current
    layout) is counted under its smallest one.
    """
    files = [read_results(p, model, checkpoint) for p in eval_files(paths)]
    done = imported_keys(wh)
    now = utcnow()
    runs, checkpoints, stats = [], {}, []
    evals: list[dict[str, Any]] = []
    for f in files:
        digest = file_digest(f.path)
        key = import_key(digest, "evals", f.model, f.checkpoint)
        fresh = key not in done
        done.add(key)  # the same content twice in one call is imported once
        shots = sorted({r["num_fewshot"] for r in f.rows}) or [0]
        stats.append({"model": f.model, "num_fewshot": shots[0], "checkpoint": f.checkpoint,
                      "tasks": {r["task"] for r in f.rows}, "rows": len(f.rows), "fresh": fresh})
        if not fresh:
            continue
        run = import_run(key, f.model, f.checkpoint, {
            "what": "evals", "source": str(f.path.resolve()), "sha256": digest, "format": f.format,
        })
        runs.append(run)
        checkpoints[(f.model, f.checkpoint)] = {
            "model": f.model, "checkpoint": f.checkpoint, "step": f.step, "tokens": f.tokens,
            **({"stage": "pretrain", "stage_order": 0} if f.model.startswith("pythia-") else {}),
        }
        source = str(f.path.resolve())
        evals.extend({
            "model": f.model, "checkpoint": f.checkpoint, "step": f.step, **r, "source_file": source,
            "harness_format": f.format, "harness_version": f.harness_version, "imported_at": now,
            "run_id": run["run_id"], "source": "lm-eval",
        } for r in f.rows)
    if runs:
        wh.write({
            "models": new_models(wh, {r["model"] for r in runs}),
            "checkpoints": list(checkpoints.values()),
            "runs": runs,
            "evals": _dedupe(evals),
        })
    return _summary(stats)


def _dedupe(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """One row per evals key: when two files score the same thing, the later file wins."""
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.unique(subset=["model", "checkpoint", "task", "metric", "filter", "num_fewshot"], keep="last",
                        maintain_order=True)


def _summary(stats: list[dict[str, Any]]) -> pl.DataFrame:
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for s in stats:
        g = groups.setdefault((s["model"], s["num_fewshot"]), {
            "model": s["model"], "num_fewshot": s["num_fewshot"], "files": 0, "checkpoints": set(),
            "tasks": set(), "rows": 0, "imported": 0, "unchanged": 0,
        })
        g["files"] += 1
        g["checkpoints"].add(s["checkpoint"])
        g["tasks"] |= s["tasks"]
        g["rows"] += s["rows"]
        g["imported" if s["fresh"] else "unchanged"] += 1
    out = [{**g, "checkpoints": len(g["checkpoints"]), "tasks": len(g["tasks"])} for _, g in sorted(groups.items())]
    return pl.DataFrame(out, schema={
        "model": pl.String, "num_fewshot": pl.Int64, "files": pl.Int64, "checkpoints": pl.Int64,
        "tasks": pl.Int64, "rows": pl.Int64, "imported": pl.Int64, "unchanged": pl.Int64,
    })


def _value(path: Path, task: str, key: str, value: Any) -> float:
    """A result's value as a float; a string, NaN or infinity is refused, naming where it is (as
    import-metrics refuses such cells): skipping it would import a task without its score."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{path}: results.{task}.{key} is a NaN or infinite value: remove that entry "
                         "(a missing score is an absent key), then import again")
    if not _is_number(value):
        raise InputError(f"{path}: results.{task}.{key} is {json.dumps(value)[:60]}, not a number: "
                         "fix or remove that entry, then import again")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isinf(value)
    )
