"""∞-gram indexes and distributional memorization: `geowh index build|query|stats`, `geowh memorize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import (
    DEFAULT_DB,
    Db,
    GpusPerWorker,
    Json,
    Ray,
    Workers,
    app,
    console,
    err_console,
    executor_of,
    print_json,
    render_frame,
)
from geowh.ingest.config import MemorizeConfig, Selection

index_app = typer.Typer(
    help="Build and query infini-gram indexes (offline, any HF tokenizer).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

IndexTokenizer = Annotated[
    str | None,
    typer.Option("--index-tokenizer", help="Tokenizer of an index built elsewhere (hub id or local path)."),
]


@index_app.command("build")
def index_build(
    corpus: Annotated[list[Path], typer.Argument(help=".txt (a document per line), .jsonl or .parquet (`text`) files or folders.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Tokenizer: HF hub id (cached) or local folder.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the index.")],
    shards: Annotated[int, typer.Option("--shards", help="Split the index into N shards (documents round-robin).")] = 1,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Build an infini-gram index from local text, tokenized by geowh (offline).

    Example: geowh index build corpus/*.jsonl --tokenizer EleutherAI/gpt-neox-20b --out indexes/my-corpus
    """
    from geowh.cli.progress import Renderer
    from geowh.index.build import build_index
    from geowh.index.index import record_index
    from geowh.warehouse import Warehouse

    with Renderer(transient=True) as progress:
        meta = build_index(corpus, tokenizer, out, shards=shards, progress=progress)
    record_index(Warehouse(db), out)
    fields = ("tokenizer", "token_dtype", "shards", "documents", "tokens", "seconds")
    summary = {"index": str(out.resolve()), **{k: getattr(meta, k) for k in fields}}
    if json_:
        print_json(summary)
    else:
        console().print(
            f"[bold]{summary['index']}[/]: {meta.documents:,} documents, {meta.tokens:,} {meta.token_dtype} tokens, "
            f"{meta.shards} shard(s), {meta.seconds:.1f} s"
        )


@index_app.command("query")
def index_query(
    directory: Annotated[Path, typer.Argument(help="The index folder.")],
    text: Annotated[str, typer.Argument(help="Text to look up (tokenized with the index's tokenizer).")],
    index_tokenizer: IndexTokenizer = None,
    json_: Json = False,
) -> None:
    """Count a text's tokens in the corpus and give P∞(last token | the ones before).

    Example: geowh index query indexes/my-corpus "The capital of France is" --json
    """
    from geowh.index.index import Index

    result = Index(directory, tokenizer=index_tokenizer).query(text)
    if json_:
        print_json(result)
    else:
        console().print(
            f"tokens {result['tokens']}\ncount {result['count']:,}\n"
            f"P∞(last | preceding) {result['prob']:.6g} (suffix of {result['suffix_len']} tokens)"
        )


@index_app.command("stats")
def index_stats(
    directory: Annotated[Path, typer.Argument(help="The index folder.")],
    task: Annotated[str, typer.Option("--task", help="QA task: triviaqa, or a .jsonl with question and answer.")],
    index_tokenizer: IndexTokenizer = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use the task's first N items.")] = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Suffix lengths P∞ used on a task's answer tokens, in the paper's Table 7 buckets.

    Example: geowh index stats indexes/pile --task triviaqa --json
    """
    import polars as pl

    from geowh.ingest.measurements.memorization import index_stats as stats
    from geowh.warehouse import Warehouse

    result = stats(directory, task, index_tokenizer=index_tokenizer, limit=limit, wh=Warehouse(db))
    if json_:
        print_json(result)
        return
    console().print(f"[bold]{result['task']}[/] on {result['index']}: {result['items']} items, "
                    f"{result['excluded']} excluded (every answer token P∞ = 0)")
    render_frame(pl.DataFrame(result["buckets"]))


@app.command()
def memorize(
    model: Annotated[str, typer.Argument(help="Registry name, hf:ORG/NAME, or a local run folder.")],
    task: Annotated[str, typer.Option("--task", help="QA task: triviaqa, or a .jsonl with question and answer.")],
    index: Annotated[Path, typer.Option("--index", help="infini-gram index folder.")],
    index_tokenizer: IndexTokenizer = MemorizeConfig.index_tokenizer,
    checkpoints: Annotated[str, typer.Option("--checkpoints", help="all, step1000,step2000, START:END[:STRIDE] or log:N.")] = Selection.checkpoints,
    revisions: Annotated[str | None, typer.Option("--revisions", help="Comma-separated hub revisions (hf: models).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the warehouse.")] = Selection.name,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Model tokenizer when checkpoints lack one.")] = MemorizeConfig.tokenizer,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = MemorizeConfig.device,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = MemorizeConfig.dtype,
    batch_size: Annotated[int, typer.Option("--batch-size", help="QA items per forward pass.")] = MemorizeConfig.batch_size,
    limit: Annotated[int | None, typer.Option("--limit", help="Use the task's first N items.")] = MemorizeConfig.limit,
    force: Annotated[bool, typer.Option("--force", help="Rescore checkpoints that already have an ok run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Distributional memorization per checkpoint: Spearman ρ of ∞-gram vs model answer log-likelihoods.

    Resumable: checkpoints already scored with the same task, index and dtype are skipped; a
    failing checkpoint is recorded in `runs` and the next one goes on. With --ray the models are
    scored on a Ray cluster (the ∞-gram side stays here, where the index is).

    Example: geowh memorize pythia-160m --task triviaqa --index indexes/pile --checkpoints log:20
    """
    import polars as pl

    from geowh.cli.ingest import selection_of
    from geowh.cli.progress import Renderer
    from geowh.ingest.measurements.memorization import memorize as run
    from geowh.warehouse import Warehouse, canonical_model

    config = MemorizeConfig(task=task, index=str(index), index_tokenizer=index_tokenizer, batch_size=batch_size,
                            limit=limit, device=device, dtype=dtype, tokenizer=tokenizer)
    with executor_of(ray, workers, gpus_per_worker) as executor, Renderer(quiet=quiet or json_) as progress:
        wh = Warehouse(db, lock_timeout=None, progress=progress)
        summary = run(canonical_model(model), config, selection_of(checkpoints, revisions, name), wh=wh, force=force,
                      progress=progress, executor=executor)
    if json_:
        print_json(summary)
    else:
        render_frame(pl.DataFrame(summary, infer_schema_length=None))
    failed = [s for s in summary if s["status"] == "failed"]
    if failed:
        err_console().print(f"[bold red]{len(failed)} checkpoint(s) failed[/]: see `geowh sql \"select checkpoint, error from runs where status = 'failed'\"`")
        raise typer.Exit(1)
