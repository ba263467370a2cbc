"""`geowh demo --memorization`: run (or, with --shipped, load) the planted-facts demo and render its claim test."""

from __future__ import annotations

from pathlib import Path

from geowh.cli.common import console, err_console, print_json, render_frame


def run(out: Path | None, db, *, steps: int | None, long: bool, shipped: bool, given: list[str], n: int,
        device: str, threads: int | None, quiet: bool, json_: bool) -> None:
    """`given`: the options of the plain demo that were set and mean nothing here (refused)."""
    from geowh.errors import InputError
    from geowh.repro import memorization_demo as mem
    from geowh.settings import settings

    if given:
        raise InputError(f"--memorization plants its own facts and task: leave out {', '.join(given)}")
    if shipped:
        if out is not None or steps is not None:
            raise InputError("--memorization --shipped trains nothing: leave out OUT and --steps")
        loaded = mem.load_shipped(db, long=long)
        if json_:
            print_json(loaded)
            return
        render_claim(loaded["claim"])
        err_console().print(f"{loaded['imported']['status']}: {loaded['imported']['rows']} metric rows → model "
                            f"{loaded['model']}", highlight=False)
        return
    from geowh.cli.progress import Renderer

    if long and steps is not None:
        raise InputError("--memorization --long trains a fixed run (L1's 8,000 steps): leave out --steps")
    folder = out or settings().home / ("demo-memorization-long" if long else "demo-memorization")
    config = (mem.long_config(n=n, device=device, threads=threads) if long
              else mem.MemorizationDemoConfig(steps=steps, n=n, device=device, threads=threads))
    with Renderer(quiet=quiet or json_) as progress:
        summary = mem.memorization_demo(folder, db, config, progress=progress)
    if json_:
        print_json(summary.to_dict())
        return
    render_claim(summary.claim)
    facts = summary.facts
    err_console().print(
        f"{summary.seconds['total']:.0f} s wall, {summary.cpu_seconds:.0f} CPU s; {facts['facts']} facts, "
        f"{facts['trained_mentions']:,} mentions in the training split; model {summary.claim['model']} → "
        f"{summary.demo['db']}", highlight=False)


def render_claim(claim: dict) -> None:
    import polars as pl

    from geowh.repro.memorization_demo import ACCURACY, HELDOUT, SCORES

    render_frame(pl.DataFrame(claim["phases"]), title=f"phases of {claim['model']}")
    names = dict(zip(SCORES, ("authors", "per token", "partial (length)")))
    rows = [{"score": names[name], "peak ρ": s["peak"], "at step": s["peak_step"], "in phase": s["peak_phase"],
             "last ρ": s["last"], "r(entropy-seeking, ρ)": s["entropy_membership_r"],
             "p": s["entropy_membership_p"], "r(entropy vs compression)": s["entropy_vs_compression_r"],
             "p (vs compression)": s["entropy_vs_compression_p"], "checkpoints": s["n"]}
            for name, s in claim["scores"].items()]
    if rows:
        render_frame(pl.DataFrame(rows), title="does memorization ρ peak in the entropy-seeking phase? "
                                               "(r: point-biserial, entropy-seeking membership against ρ, over all "
                                               "checkpoints and against compression-seeking's alone)")
    short = {"step": "step", "phase": "phase", "rankme": "RankMe", "alpha_req": "αReQ", SCORES[0]: "ρ",
             SCORES[2]: "ρ partial", ACCURACY: "acc", f"{ACCURACY}_100plus": "acc 100+", f"{ACCURACY}_10_99": "acc 10-99",
             f"{ACCURACY}_2_9": "acc 2-9", f"{ACCURACY}_1": "acc 1", HELDOUT: "held-out loss"}
    frame = pl.DataFrame(claim["trajectory"])
    frame = frame.select([pl.col(k).alias(v) for k, v in short.items() if k in frame.columns])
    render_frame(frame.with_columns(pl.selectors.float().round(3)),
                 title="trajectory (acc: greedy accuracy on the planted facts, by training-split frequency)")
    change = claim["compression_seeking"]
    if change is None:
        console().print("no compression-seeking phase was found: its effect on rare facts cannot be read here",
                        highlight=False)
    else:
        render_frame(pl.DataFrame([{"series": k, **v} for k, v in change.items() if k != "steps"]),
                     title=f"compression-seeking, steps {change['steps'][0]}–{change['steps'][1]}: start → end")
