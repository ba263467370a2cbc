"""`geowh toy`: the paper's §3.3 mechanistic toy model and its controls, as warehouse series."""

from __future__ import annotations

from typing import Annotated

import typer

from geowh.cli.common import DEFAULT_DB, Db, Json, app, print_json, render_frame
from geowh.repro.toy import ToyConfig

_D = ToyConfig()


@app.command()
def toy(
    d: Annotated[int, typer.Option("--d", help="Feature width d (the bottleneck: d < classes).")] = _D.d,
    classes: Annotated[int, typer.Option(help="Number of classes |V|.")] = _D.classes,
    samples: Annotated[int, typer.Option(help="Number of samples N (orthonormal inputs).")] = _D.samples,
    skew: Annotated[float, typer.Option(help="Zipf exponent of the class frequencies (0 = uniform).")] = _D.skew,
    label_noise: Annotated[
        float, typer.Option(help="Share of each sample's labels drawn from the global Zipf frequencies.")
    ] = _D.label_noise,
    loss: Annotated[str, typer.Option(help="Loss of the main run: ce or mse.")] = _D.loss,
    steps: Annotated[int, typer.Option(help="Full-batch gradient-descent steps.")] = _D.steps,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = _D.lr,
    init: Annotated[str, typer.Option(help="Initialisation: balanced (θθᵀ = WᵀW) or random.")] = _D.init,
    init_scale: Annotated[float, typer.Option(help="Initial singular value (balanced) or weight scale (random).")] = _D.init_scale,
    seed: Annotated[int, typer.Option(help="Seed of the labels and the initialisation.")] = _D.seed,
    no_controls: Annotated[
        bool, typer.Option("--no-controls", help="Only the main series, not toy-uniform/-no-bottleneck/-mse.")
    ] = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Train the §3.3 toy model (and its controls) and write their spectra as series `toy`, `toy-uniform`, … .

    Then `geowh phases --model toy --metric rankme` segments it like any other model.

    Example: geowh toy --db toy.duckdb && geowh phases --db toy.duckdb --model toy --metric rankme
    """
    import polars as pl

    from geowh.cli.progress import Renderer
    from geowh.repro.toy import LATE_FALL, write_toy

    config = ToyConfig(d=d, classes=classes, samples=samples, skew=skew, label_noise=label_noise, loss=loss,
                       steps=steps, lr=lr, init=init, init_scale=init_scale, seed=seed)
    with Renderer() as progress:
        summaries = write_toy(db, config, controls=not no_controls, progress=progress)
    if json_:
        print_json(summaries)
        return
    render_frame(
        pl.DataFrame([{
            "series": s["model"], "start": round(s["start"], 3),
            "min": round(s["min"], 3), "min at": s["min_step"],
            "max": round(s["max"], 3), "max at": s["max_step"],
            "end": round(s["end"], 3), "late fall": f"{100 * s['late_fall']:.1f}%",
            "fell late": "yes" if s["fell_late"] else "no",
        } for s in summaries]),
        title=f"RankMe by step (max: after the min; fell late: end ≥ {LATE_FALL:.0%} below that max)",
    )
