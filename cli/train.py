"""Commands that make a checkpoint series offline: train-mini."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import Json, app, console, err_console, print_json
from geowh.cli.progress import Renderer
from geowh.repro.train import TrainConfig

_D = TrainConfig()


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


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
