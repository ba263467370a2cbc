"""Commands that make a checkpoint series offline: train-mini, posttrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import Json, app, console, err_console, print_json
from geowh.cli.progress import Renderer
from geowh.repro.posttrain import PosttrainConfig
from geowh.repro.train import TrainConfig

_D = TrainConfig()
_P = PosttrainConfig()


@app.command("train-mini")
def train_mini(
    out: Annotated[Path, typer.Argument(help="Run folder: checkpoints OUT/step{N}/, probe.txt, train_config.json.")],
    minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget of the whole command; the step count is planned from it.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Train exactly this many steps instead of a time budget.")] = None,
    corpus: Annotated[
        list[Path] | None,
        typer.Option(help="Training text (.txt one document per line, .jsonl, .parquet); repeat for several files. "
                     "Default: the docstrings and comments of Python's standard library and geowh's dependencies."),
    ] = None,
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = _D.layers,
    d_model: Annotated[int, typer.Option(help="Hidden size (the feature dimension d).")] = _D.d_model,
    vocab: Annotated[int, typer.Option(help="Size of the byte-level BPE trained on the corpus.")] = _D.vocab,
    tokenizer: Annotated[
        str | None, typer.Option(help="Use this tokenizer (folder or hub id) instead of training one.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = _D.batch_size,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = _D.seq_len,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW), reached after the warmup.")] = _D.lr,
    warmup: Annotated[float, typer.Option(help="Fraction of the steps spent warming the learning rate up.")] = _D.warmup,
    min_lr_ratio: Annotated[
        float, typer.Option(help="The cosine decays to lr × this at the last step (Pythia: 0.1; 1.0: a constant rate).")
    ] = _D.min_lr_ratio,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on the weight matrices (Pythia: 0.01).")] = _D.weight_decay,
    checkpoints: Annotated[int, typer.Option(help="Evenly spaced checkpoints after the log-spaced early ones.")] = _D.checkpoints,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="Forward precision: auto (bf16 autocast on a GPU or a CPU with native bf16 units), float32, bfloat16.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the data split, initialisation and batches.")] = _D.seed,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_: Json = False,
) -> None:
    """Train a small Pythia-architecture model from scratch and save a checkpoint series.

    Checkpoints (with their tokenizer) land in OUT/step0, step1, step2, … on Pythia's
    schedule: step 0, half powers of two, then evenly spaced. Rerunning on OUT resumes an
    interrupted run or returns a finished one. Without --minutes or --steps the budget is 10
    minutes. Then: geowh ingest OUT --probe OUT/probe.txt --n 500 --max-len 128

    Example: geowh train-mini runs/mini --minutes 10
    """
    from geowh.repro.train import train_mini as run

    config = TrainConfig(
        layers=layers, d_model=d_model, vocab=vocab, tokenizer=tokenizer, batch_size=batch_size, seq_len=seq_len,
        lr=lr, warmup=warmup, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, seed=seed, corpus=tuple(str(p) for p in corpus or ()), checkpoints=checkpoints,
    )
    with Renderer(quiet=quiet or json_) as progress:
        summary = run(out, config, minutes=minutes, steps=steps, device=device, dtype=dtype, progress=progress)
    if json_:
        print_json(summary.to_dict())
        return
    console().print(
        f"[bold]{summary.status}[/] {summary.out}: {summary.steps:,} steps, {summary.tokens:,} tokens, "
        f"{len(summary.checkpoints)} checkpoints, {summary.parameters:,} parameters, {summary.seconds:.0f} s on "
        f"{summary.device}; train loss {_num(summary.train_loss)}, held-out loss {_num(summary.eval_loss)}",
        highlight=False,
    )
    err_console().print(f"next: geowh ingest {summary.out} --probe {summary.probe} --n 500 --max-len 128", highlight=False)


@app.command()
def posttrain(
    base: Annotated[Path, typer.Argument(help="The checkpoint to start from (a folder with config.json, weights and tokenizer).")],
    out: Annotated[Path, typer.Argument(help="Output folder: pretrain-step{N}/, sft-step{S}/, dpo-step{S}/, rlvr-step{S}/, tasks/.")],
    stages: Annotated[
        str | None, typer.Option(help="Stages to run, in order: sft,dpo,rlvr (default) or a subset such as sft,dpo.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps of each stage.")] = _P.steps,
    checkpoints: Annotated[int, typer.Option(help="Checkpoints of each stage, log-spaced from its first step.")] = _P.checkpoints,
    batch_size: Annotated[int, typer.Option(help="Sequences per step (RLVR: completions, --generations per prompt).")] = _P.batch_size,
    generations: Annotated[int, typer.Option(help="RLVR: completions sampled per prompt (GRPO's group).")] = _P.generations,
    lr: Annotated[float | None, typer.Option(help="Learning rate of every stage (default: SFT 1e-3, DPO and RLVR 2e-4).")] = None,
    corpus: Annotated[
        list[Path] | None, typer.Option(help="Text files the tasks are derived from (default: train-mini's corpus).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")] = _P.device,
    seed: Annotated[int, typer.Option(help="Seed of the tasks, the data order and the sampling.")] = _P.seed,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_: Json = False,
) -> None:
    """Post-train a checkpoint offline: SFT, then DPO, then RLVR (TRL), each stage saving checkpoints into OUT.

    The tasks are derived from the corpus into OUT/tasks/ (docs/posttrain.md): copy (in-distribution,
    held-out items; RLVR's reward, checker exact), phrase (out-of-distribution) and DPO's pairs.
    Rerunning reuses finished stages and restarts an interrupted one. Needs TRL: geowh's posttrain extra.
    Then: geowh ingest OUT --probe PROBE --generate OUT/tasks/copy.jsonl,OUT/tasks/phrase.jsonl

    Example: geowh posttrain runs/mini/step600 runs/post --steps 200
    """
    from geowh.repro.posttrain import check_stages
    from geowh.repro.posttrain import posttrain as run

    config = PosttrainConfig(
        stages=check_stages([s.strip() for s in stages.split(",") if s.strip()]) if stages is not None else _P.stages,
        steps=steps, checkpoints=checkpoints, batch_size=batch_size, generations=generations, lr=lr,
        corpus=tuple(str(p) for p in corpus or ()), device=device, seed=seed,
    )
    with Renderer(quiet=quiet or json_) as progress:
        summary = run(base, out, config, progress=progress)
    if json_:
        print_json(summary.to_dict())
        return
    for stage, done in summary.stages.items():
        log = done.get("last_log") or {}
        shown = ", ".join(f"{k} {log[k]:.3g}" for k in ("loss", "reward") if k in log)
        console().print(f"[bold]{stage}[/] {done['status']}: {done['steps']} steps, {len(done['checkpoints'])} checkpoints, "
                        f"{done['seconds']:.0f} s{'; last step: ' + shown if shown else ''}", highlight=False)
    console().print(f"{len(summary.checkpoints)} checkpoints in {summary.out} ({summary.seconds:.0f} s on {summary.device})",
                    highlight=False)
    tasks = summary.tasks
    err_console().print(
        f"next: geowh ingest {summary.out} --generate {summary.out}/{tasks['in_distribution']['file']},"
        f"{summary.out}/{tasks['out_of_distribution']['file']}; then geowh phases --model {Path(summary.out).name}",
        highlight=False)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
