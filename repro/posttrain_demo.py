"""`geowh demo --post-training`: the second half of the study on one laptop, offline.

`posttrain_demo(OUT, db)` chains what the other commands do, each step reusing the work
already done in OUT:

1. **base** — the demo's run (`geowh demo OUT` trains the same one: train-mini, DEFAULT_STEPS
   steps); its last checkpoint is the base. A run already in OUT is reused (or resumed).
2. **posttrain** — `posttrain(OUT/step{N}, OUT/post)`: SFT → DPO → RLVR with TRL, the tasks
   derived into OUT/post/tasks/ (geowh.repro.posttrain).
3. **ingest** — every checkpoint of OUT/post, one stage-ordered series: the geometry on the
   base run's held-out probe, and the generation measurement (`--generate`) on the
   in-distribution task (held-out copy items) and the out-of-distribution one (phrase).
4. **claims** — `phases` on the series and the paper's claims checked (queries/claims.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.repro.demo import DEFAULT_MAX_LEN, DEFAULT_STEPS, _Timer, cpu_threads, saved_run
from geowh.repro.posttrain import IN_TASK, OOD_TASK, TASK_DIR, PosttrainConfig
from geowh.settings import settings
from geowh.warehouse import Warehouse, as_warehouse

POST_DIR = "post"
# The demo's post-training, sized to fit its time budget on 2 CPU cores (docs/results.md).
DEMO_POSTTRAIN = PosttrainConfig(steps=150, checkpoints=6, batch_size=16, generations=4)
# Generation per checkpoint: pass@1 and pass@SAMPLES (k runs up to the samples drawn), completions
# of at most 8 tokens (a copy answer is 2 words, a phrase answer 1).
SAMPLES = 8
GENERATE = {"temperature": 1.0, "max_new_tokens": 8}
PROBE_N = 256


@dataclass(frozen=True)
class PostDemoConfig:
    """How `posttrain_demo` runs: the post-training (PosttrainConfig's fields, DEMO_POSTTRAIN's sizes),
    the probe size, the samples per item, the device and torch's CPU threads (default: `cpu_threads()`)."""

    posttrain: PosttrainConfig = DEMO_POSTTRAIN
    n: int = PROBE_N
    samples: int = SAMPLES
    device: str = "auto"
    threads: int | None = None
    name: str | None = None
    """The series' name in the warehouse (default: OUT's folder name + `-post`)."""


@dataclass
class PostDemoSummary:
    """What `posttrain_demo` did: `geowh demo --post-training --json` prints `to_dict()`."""

    out: str
    db: str
    model: str
    base: dict
    posttrain: dict
    ingest: dict
    phases: list[dict]
    claims: list[dict]
    """Per post-training stage (StageClaims.to_dict): its behaviour changes and the paper's claims checked."""
    generation: bool
    """Whether the generation measurement ran (the behaviour behind the claims)."""
    threads: int
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    """CPU seconds of this process (user + system) over the call: the work, apart from the machine's load."""

    def to_dict(self) -> dict:
        return asdict(self)


def posttrain_demo(out: str | Path, db: str | Path | Warehouse | None = None, config: PostDemoConfig = PostDemoConfig(),
                   *, progress: Progress = silent) -> PostDemoSummary:
    """Base run → SFT → DPO → RLVR → ingest (geometry + generation) → phases and the paper's claims. Resumable.

    Example:
        summary = posttrain_demo("runs/demo", "demo.duckdb")
        summary.claims   # [{'stage': 'sft', 'claim': 'entropy-seeking', 'verdict': '✓', …}, …]
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(config.threads or cpu_threads())
    try:
        return _run(Path(out).expanduser(), as_warehouse(db if db is not None else settings().db), config,
                    progress)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, wh: Warehouse, cfg: PostDemoConfig, progress: Progress) -> PostDemoSummary:
    import os

    import torch

    from geowh.ingest.config import IngestConfig, Selection
    from geowh.ingest.engine.run import ingest
    from geowh.ingest.measurements import registry
    from geowh.queries.claims import claims
    from geowh.queries.phases import phases
    from geowh.repro.posttrain import posttrain
    from geowh.repro.train import TrainConfig, train_mini

    started, cpu = time.monotonic(), os.times()
    seconds: dict[str, float] = {}
    progress(Event("info", f"torch on {torch.get_num_threads()} CPU thread(s); run folder {out}, warehouse {wh.path}"))

    def stage(key: str, title: str):
        progress(Event("stage", f"{len(seconds) + 1}/4 {title}"))
        return _Timer(seconds, key)

    with stage("base", "the base: the demo's train-mini run"):
        saved, planned = saved_run(out)
        trained = train_mini(out, saved or TrainConfig(), steps=planned or DEFAULT_STEPS, device=cfg.device, progress=progress)
        base = out / f"step{trained.steps}"
        progress(Event("info", f"{trained.status}: {trained.steps:,} steps; base {base}"))

    with stage("posttrain", "posttrain: SFT → DPO → RLVR (TRL)"):
        post = posttrain(base, out / POST_DIR, replace(cfg.posttrain, device=cfg.device), progress=progress)

    generation = "generation" in registry()
    with stage("ingest", "ingest: geometry + generation per checkpoint"):
        tasks = out / POST_DIR / TASK_DIR
        options: dict[str, Any] = {}
        if generation:
            options = {**GENERATE, "samples": cfg.samples, "k": ",".join(str(k) for k in sorted({1, cfg.samples})),
                       "generate": f"{tasks / IN_TASK}.jsonl,{tasks / OOD_TASK}.jsonl"}
        else:
            progress(Event("info", "the generation measurement is not in this geowh: geometry only, the behaviour claims say no data"))
        # fp32 features, as the demo's ingest: narrow models' spectra lose their tail in bf16.
        summary = ingest(str(out / POST_DIR), IngestConfig(probe=str(out / "probe.txt"), n=cfg.n,
                                                           max_len=DEFAULT_MAX_LEN, device=cfg.device,
                                                           dtype="float32"),
                         Selection(name=cfg.name or f"{out.name}-post"), db=wh.path, progress=progress, options=options)
        if summary.failed:
            first = next(c for c in summary.checkpoints if c["status"] == "failed")
            raise InputError(f"{summary.failed} checkpoint(s) of {out / POST_DIR} failed to ingest, e.g. "
                             f"{first['checkpoint']}: {first.get('error')}; rerun to retry them")
        ingested = {"model": summary.model, "ok": summary.count("ok"), "skipped": summary.count("skipped"),
                    "failed": summary.failed}

    with stage("claims", "phases and the paper's claims"):
        found = phases(wh, summary.model, progress=progress)
        checked = claims(wh, summary.model, found)

    seconds["total"] = round(time.monotonic() - started, 1)
    now = os.times()
    return PostDemoSummary(
        out=str(out), db=str(wh.path), model=summary.model,
        base={"checkpoint": str(base), "status": trained.status, "steps": trained.steps},
        posttrain={"status": {s: d["status"] for s, d in post.stages.items()}, "checkpoints": post.checkpoints,
                   "tasks": post.tasks, "seconds": post.seconds},
        ingest=ingested, phases=found.to_dicts(), claims=[s.to_dict() for s in checked], generation=generation,
        threads=torch.get_num_threads(), seconds=seconds,
        cpu_seconds=round((now.user - cpu.user) + (now.system - cpu.system), 1),
    )
