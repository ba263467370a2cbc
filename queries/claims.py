"""The paper's post-training claims, checked on a stage-ordered series (`geowh phases`).

Li et al. report, per post-training stage, a direction of the geometry and of behaviour:

- SFT and DPO are entropy-seeking, raise in-distribution performance and lower
  out-of-distribution performance;
- RLVR is compression-seeking, raises the reward (pass@1) and lowers diversity (the gain of
  pass@k over pass@1 for the largest k stored, distinct-1, distinct-2).

A stage's change is measured from the previous stage's last checkpoint (the last pretraining
one for the first stage) to the stage's last checkpoint, as `phases` labels its geometry.
Behaviour comes from `evals` rows (task, metric: accuracy, pass@K, distinct-1, distinct-2,
entropy — what `geowh ingest --generate` writes, or any import with those names). Each
behaviour claim is tested with a two-sided two-sample z-test on the stored values and their
standard errors, z = (end − start) / √(se_start² + se_end²), at `ALPHA`: ✓ when significant
in the claimed direction, ✗ when significant against it, "not significant" otherwise, and
"untested" when a standard error is missing. The geometry claim is the stage's phase label
(`phases`: the signal must change by `min_change`). Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import polars as pl

from geowh.warehouse import Warehouse, canonical_model

ALPHA = 0.05
TEST = "two-sided two-sample z-test on value ± stderr of the stage's start and end checkpoints"
GEOMETRY_TEST = "phase label of the stage (signal change beyond phases' min_change)"
BEHAVIOUR = ("accuracy", "distinct-1", "distinct-2", "entropy")
_PASS = re.compile(r"^pass@(\d+)$")
# Defaults: the task names `geowh posttrain` writes (geowh.repro.posttrain: IN_TASK, OOD_TASK).
IN_TASK, OOD_TASK, REWARD_TASK = "copy", "phrase", "copy"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper about one stage: what is measured, and which way it should move."""

    stage: str
    claim: str
    """How the table names it: in-distribution ↑, reward (pass@1) ↑, …"""
    kind: str
    """geometry, or the behaviour measured: metric (task/metric) or gap (task/pass@K − pass@1)."""
    direction: int
    """+1: should rise; −1: should fall (geometry: +1 entropy-seeking, −1 compression-seeking)."""
    role: str = ""
    """in, ood or reward: which task option names the task."""
    metric: str = ""


CLAIMS: tuple[Claim, ...] = (
    *(c for stage in ("sft", "dpo") for c in (
        Claim(stage, "entropy-seeking", "geometry", +1),
        Claim(stage, "in-distribution ↑", "metric", +1, "in", "accuracy"),
        Claim(stage, "out-of-distribution ↓", "metric", -1, "ood", "accuracy"),
    )),
    Claim("rlvr", "compression-seeking", "geometry", -1),
    Claim("rlvr", "reward (pass@1) ↑", "metric", +1, "reward", "pass@1"),
    Claim("rlvr", "diversity: pass@k − pass@1 ↓", "gap", -1, "reward", "pass@k"),
    Claim("rlvr", "diversity: distinct-1 ↓", "metric", -1, "reward", "distinct-1"),
    Claim("rlvr", "diversity: distinct-2 ↓", "metric", -1, "reward", "distinct-2"),
)
"""The paper's claims (METHOD.md §4), one entry each: adding a claim is adding a line."""


@dataclass
class StageClaims:
    """What `claims` found for one post-training stage."""

    stage: str
    start_checkpoint: str | None
    end_checkpoint: str
    behaviour: list[dict] = field(default_factory=list)
    """Per (task, metric): start, end, change, their standard errors."""
    claims: list[dict] = field(default_factory=list)
    """Per claim: verdict (✓, ✗, not significant, untested, no data), the numbers and the test."""

    def to_dict(self) -> dict:
        return asdict(self)


def claims(wh: Warehouse, model: str, phase_rows: pl.DataFrame | None = None, *, in_task: str = IN_TASK,
           ood_task: str = OOD_TASK, reward_task: str = REWARD_TASK, alpha: float = ALPHA) -> list[StageClaims]:
    """The paper's claims checked on each post-training stage of `model`, in series order.

    `phase_rows` are the phases of its trajectory (`phases(...)`), whose stage rows give the
    geometry label; without them the geometry claims say "no data". A series without
    post-training stages gives an empty list.
    """
    model = canonical_model(model)
    order = _checkpoints(wh, model)
    if order.height == 0:  # metrics without checkpoint rows (a toy run, some imports): no stages to check
        return []
    evals = _evals(wh, model)
    tasks = {"in": in_task, "ood": ood_task, "reward": reward_task}
    found = []
    stages = [s for s in dict.fromkeys(order["stage"].to_list()) if s not in (None, "pretrain", "mid")]
    for stage in stages:
        part = order.filter(pl.col("stage") == stage)
        before = order.filter(pl.col("position") < part["position"].min())
        span = StageClaims(stage, None, part["checkpoint"][-1])
        span.behaviour = _behaviour(evals, before, part)
        span.start_checkpoint = next((b["start_checkpoint"] for b in span.behaviour if b["start_checkpoint"]),
                                     before["checkpoint"][-1] if before.height else None)
        geometry = _geometry_row(phase_rows, stage)
        span.claims = [_check(c, span.behaviour, geometry, tasks, alpha) for c in CLAIMS if c.stage == stage]
        found.append(span)
    return found


def _checkpoints(wh: Warehouse, model: str) -> pl.DataFrame:
    rows = wh.query(
        "SELECT checkpoint, stage, stage_order, step FROM checkpoints WHERE model = ? "
        "ORDER BY coalesce(stage_order, 0), step, checkpoint", [model])
    return rows.with_row_index("position")


def _evals(wh: Warehouse, model: str) -> pl.DataFrame:
    """One value per (checkpoint, task, metric): zero-shot and unfiltered when there is a choice."""
    rows = wh.query(
        "SELECT checkpoint, task, metric, value, stderr FROM evals WHERE model = ? "
        "QUALIFY row_number() OVER (PARTITION BY checkpoint, task, metric ORDER BY num_fewshot, filter != 'none', filter) = 1",
        [model])
    return rows.filter(pl.col("metric").is_in(BEHAVIOUR) | pl.col("metric").str.contains(r"^pass@\d+$"))


def _behaviour(evals: pl.DataFrame, before: pl.DataFrame, part: pl.DataFrame) -> list[dict]:
    """Each (task, metric) from its last value before the stage to its last value in it."""
    rows = []
    inside = evals.join(part.select("checkpoint", "position"), on="checkpoint")
    earlier = evals.join(before.select("checkpoint", "position"), on="checkpoint")
    for (task, metric), end_rows in inside.sort("position").group_by(["task", "metric"], maintain_order=True):
        end = end_rows.row(-1, named=True)
        start_rows = earlier.filter((pl.col("task") == task) & (pl.col("metric") == metric)).sort("position")
        if start_rows.height == 0:  # no earlier stage measured: from the stage's own first checkpoint
            start_rows = end_rows
        start = start_rows.row(0 if start_rows is end_rows else -1, named=True)
        rows.append({
            "task": task, "metric": metric, "start_checkpoint": start["checkpoint"], "end_checkpoint": end["checkpoint"],
            "start": start["value"], "end": end["value"], "change": _diff(end["value"], start["value"]),
            "start_stderr": start["stderr"], "end_stderr": end["stderr"],
        })
    rows.sort(key=lambda r: (r["task"], _metric_key(r["metric"])))
    return rows


def _metric_key(metric: str) -> tuple:
    m = _PASS.match(metric)
    return (1, int(m.group(1)), "") if m else (0 if metric == "accuracy" else 2, 0, metric)


def _geometry_row(phase_rows: pl.DataFrame | None, stage: str) -> dict | None:
    if phase_rows is None or phase_rows.height == 0:
        return None
    rows = phase_rows.filter(pl.col("stage") == stage)
    return rows.row(-1, named=True) if rows.height else None


def _check(claim: Claim, behaviour: list[dict], geometry: dict | None, tasks: dict, alpha: float) -> dict:
    base = {"claim": claim.claim, "expected": "rises" if claim.direction > 0 else "falls", "test": TEST}
    if claim.kind == "geometry":
        expected = "entropy-seeking" if claim.direction > 0 else "compression-seeking"
        base |= {"expected": expected, "test": GEOMETRY_TEST}
        if geometry is None:
            return base | {"verdict": "no data", "observed": None, "why": "no phases of this stage: run phases"}
        label = geometry["phase"]
        verdict = "✓" if label == expected else "not significant" if label == "flat" else "✗"
        return base | {"verdict": verdict, "observed": label, "delta_rankme": geometry["delta_rankme"],
                       "delta_alpha_req": geometry["delta_alpha_req"]}
    task = tasks[claim.role]
    values = {b["metric"]: b for b in behaviour if b["task"] == task}
    base["task"] = task
    if claim.kind == "gap":
        ks = sorted(int(m.group(1)) for name in values if (m := _PASS.match(name)) and int(m.group(1)) > 1)
        if "pass@1" not in values or not ks:
            return base | {"verdict": "no data", "why": f"no pass@1 and pass@k (k > 1) of {task} over this stage"}
        top, one = values[f"pass@{ks[-1]}"], values["pass@1"]
        base["metric"] = f"pass@{ks[-1]} − pass@1"
        start, end = _diff(top["start"], one["start"]), _diff(top["end"], one["end"])
        # The gap's standard error, treating pass@k and pass@1 as independent: conservative, as they correlate.
        start_se = _hypot(top["start_stderr"], one["start_stderr"])
        end_se = _hypot(top["end_stderr"], one["end_stderr"])
    else:
        if claim.metric not in values:
            return base | {"metric": claim.metric, "verdict": "no data",
                           "why": f"no {claim.metric} of task {task} over this stage (evals rows)"}
        row = values[claim.metric]
        base["metric"] = claim.metric
        start, end, start_se, end_se = row["start"], row["end"], row["start_stderr"], row["end_stderr"]
    return base | z_verdict(start, end, start_se, end_se, claim.direction, alpha)


def z_verdict(start: float | None, end: float | None, start_se: float | None, end_se: float | None,
              direction: int, alpha: float = ALPHA) -> dict:
    """The z-test of a change from `start` to `end` and the verdict on a claim of `direction` (+1 up, −1 down)."""
    numbers = {"start": _r(start), "end": _r(end), "change": _r(_diff(end, start))}
    if start is None or end is None or not (math.isfinite(start) and math.isfinite(end)):
        return numbers | {"verdict": "no data", "why": "a value is missing"}
    if start_se is None or end_se is None:
        return numbers | {"verdict": "untested", "why": "no standard error stored for this metric"}
    change, se = end - start, math.hypot(start_se, end_se)
    if se == 0:
        z, p = (0.0, 1.0) if change == 0 else (math.copysign(math.inf, change), 0.0)
    else:
        z = change / se
        p = math.erfc(abs(z) / math.sqrt(2))  # two-sided normal tail
    if p >= alpha:
        verdict = "not significant"
    else:
        verdict = "✓" if change * direction > 0 else "✗"
    return numbers | {"z": _r(z), "p": _r(p), "verdict": verdict}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _hypot(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else math.hypot(a, b)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6) if math.isfinite(x) else float(x)


def claims_table(found: Sequence[StageClaims]) -> list[dict]:
    """One flat row per (stage, claim): what `geowh phases` prints under the phases."""
    return [{"stage": s.stage, **c} for s in found for c in s.claims]
