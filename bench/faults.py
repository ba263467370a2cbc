"""Fault injection: an ingest of a tiny local series, killed, interrupted, locked out and starved of disk.

    python bench/faults.py [--trials 20] [--signals 4] [--lock-seconds 90] [--quick] [--json]

Every trial starts `geowh ingest` on a fresh warehouse (4 tiny GPT-NeoX checkpoints from
tests/tiny.py, 64 probe texts), hurts it, then runs `geowh info` and the same ingest again
(the resume), as a user would, and compares the result with one uninterrupted ingest:

- kill -9 at a random point (`--trials` of them);
- SIGINT and SIGTERM at random points (`--signals` of each): exit 130/143 expected;
- a reader holding the file (a writable DuckDB connection) for `--lock-seconds` from a random
  point: the ingest must wait and store every checkpoint;
- a full file system (a small tmpfs, filled at a random size) where the machine can mount one
  (root on Linux); skipped otherwise. The resume runs after the tmpfs has been enlarged.

Figures (goal: 0 for every one but the first two):
  trials, warehouses that open, partial checkpoints, resumes that differ from an uninterrupted
  run, computed checkpoints lost (printed `ok` by the hurt process, not ok in the warehouse),
  tracebacks (in any command's output), stale running rows (`running` after the next command),
  and for the full disk, runs whose error was not one line.

--quick is the CI size: 2 kills, one SIGINT, one SIGTERM, a 5 s lock, one full disk.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# The console script of this interpreter's environment, whether or not that is on PATH.
GEOWH = str(Path(sys.executable).with_name("geowh"))
INGEST = ["--probe", "docs.txt", "--n", "64", "--max-len", "32"]
ENV = os.environ | {"COLUMNS": "200", "NO_COLOR": "1"}


def geowh(workdir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([GEOWH, *args], cwd=workdir, capture_output=True, text=True, env=ENV, timeout=900, **kwargs)


def start_ingest(workdir: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen([GEOWH, "ingest", "./run", *INGEST, "--db", str(db)], cwd=workdir, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(db: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT checkpoint, layer, pooling, metric, value FROM metrics ORDER BY checkpoint, layer, pooling, metric"
        ).fetchall()
    finally:
        con.close()


def same(a: list[tuple], b: list[tuple]) -> bool:
    def key(row):
        *names, value = row
        return (*names, "nan" if isinstance(value, float) and math.isnan(value) else value)

    return [key(r) for r in a] == [key(r) for r in b]


def inspect(db: Path, expected: dict[str, int]) -> dict:
    """Whether the file opens, its partial checkpoints, ok checkpoints and running rows."""
    import duckdb

    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return {"opens": False, "partial": 0, "ok": set(), "running": 0}
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "runs" not in tables:
            return {"opens": True, "partial": 0, "ok": set(), "running": 0}
        ok = {r[0] for r in con.execute("SELECT checkpoint FROM runs WHERE status = 'ok'").fetchall()}
        rows = dict(con.execute("SELECT checkpoint, count(*) FROM metrics GROUP BY ALL").fetchall())
        running = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchall()[0][0]
    finally:
        con.close()
    # partial: rows without an ok run, an ok run without its rows, or some of its rows only
    partial = sum(1 for c in expected if (c in ok) != (c in rows) or (c in rows and rows[c] != expected[c]))
    return {"opens": True, "partial": partial, "ok": ok, "running": running}


def printed_ok(stderr: str) -> set[str]:
    return {line.split()[1] for line in stderr.splitlines() if line.startswith("ok ")}


class Figures:
    def __init__(self):
        self.rows: dict[str, dict[str, int]] = {}

    def add(self, kind: str, **values: int) -> None:
        row = self.rows.setdefault(kind, {k: 0 for k in COLUMNS})
        for k, v in values.items():
            row[k] += int(v)

    def total(self) -> dict[str, int]:
        return {k: sum(r[k] for r in self.rows.values()) for k in COLUMNS}


COLUMNS = ("trials", "opens", "partial", "resume_differs", "lost", "tracebacks", "stale_running", "not_one_line")
TITLES = ("trials", "warehouses that open", "partial checkpoints", "resumes that differ", "computed checkpoints lost",
          "tracebacks", "stale running rows", "errors not one line")


def after(kind: str, figures: Figures, workdir: Path, db: Path, hurt_err: str, reference: list, expected: dict,
          outputs: list[str]) -> None:
    """What a hurt ingest left, then `geowh info` and the resume."""
    state = inspect(db, expected) if db.exists() else {"opens": True, "partial": 0, "ok": set(), "running": 0}
    lost = len(printed_ok(hurt_err) - state["ok"])
    info = geowh(workdir, "info", "--db", str(db), "--json") if db.exists() else None
    stale = 0
    if info is not None:
        outputs.append(info.stderr)
        if info.returncode == 0:
            stale += json.loads(info.stdout).get("running_runs", state["running"])
    resume = geowh(workdir, "ingest", "./run", *INGEST, "--db", str(db))
    outputs.append(resume.stderr)
    final = inspect(db, expected)
    stale += final["running"]
    differs = resume.returncode != 0 or not same(metrics(db), reference)
    figures.add(kind, trials=1, opens=state["opens"], partial=state["partial"] + final["partial"],
                resume_differs=differs, lost=lost, tracebacks=sum("Traceback" in o for o in outputs),
                stale_running=stale)


def kill_trial(figures, workdir, db, duration, reference, expected, rng) -> None:
    proc = start_ingest(workdir, db)
    time.sleep(rng.uniform(0.1, 1.05) * duration)
    proc.kill()
    _, err = proc.communicate()
    after("kill -9", figures, workdir, db, err, reference, expected, [])


def signal_trial(figures, workdir, db, duration, reference, expected, rng, sig) -> None:
    proc = start_ingest(workdir, db)
    time.sleep(rng.uniform(0.1, 1.05) * duration)
    proc.send_signal(sig)
    _, err = proc.communicate()
    # stopped by it with 128 + signal, or it had finished: exited 0, or was exiting (-signal, the default action)
    bad_exit = proc.returncode not in (0, 128 + sig, -sig)
    lines = [line for line in err.splitlines() if line.startswith(("stopped", "error"))]
    figures.add(signal.Signals(sig).name, not_one_line=bad_exit or len(lines) > 1)
    after(signal.Signals(sig).name, figures, workdir, db, err, reference, expected, [err])


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def lock_trial(figures, workdir, db, duration, reference, expected, rng, seconds) -> None:
    proc = start_ingest(workdir, db)
    time.sleep(rng.uniform(0.3, 0.8) * duration)
    while not db.exists():
        time.sleep(0.1)
    holder = None
    while holder is None:  # the ingest holds the file only while it writes: retry until the reader gets it
        attempt = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
        if attempt.stdout.readline().strip() == "holding":
            holder = attempt
        else:
            attempt.wait()
    _, err = proc.communicate()
    holder.wait()
    state = inspect(db, expected)
    figures.add("reader holds the file", trials=1, opens=state["opens"], partial=state["partial"],
                lost=len(set(expected) - state["ok"]), tracebacks="Traceback" in err, stale_running=state["running"],
                resume_differs=proc.returncode != 0 or not same(metrics(db), reference))


def disk_trial(figures, workdir, reference, expected, rng, full_size) -> bool:
    mount = Path(tempfile.mkdtemp(prefix="geowh-disk-"))
    size = rng.randint(256, max(300, int(full_size * 0.9) // 1024))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        mount.rmdir()
        return False
    try:
        db = mount / "w.duckdb"
        hurt = geowh(workdir, "ingest", "./run", *INGEST, "--db", str(db))
        errors = [line for line in hurt.stderr.splitlines() if line.startswith("error:")]
        full = hurt.returncode == 1 and len(errors) == 1 and "full" in errors[0]
        figures.add("full disk", not_one_line=hurt.returncode != 0 and not full)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        after("full disk", figures, workdir, db, hurt.stderr, reference, expected, [hurt.stderr])
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        mount.rmdir()
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials")
    parser.add_argument("--signals", type=int, default=4, help="SIGINT trials, and as many SIGTERM")
    parser.add_argument("--lock-seconds", type=float, default=90.0, help="how long a reader holds the file")
    parser.add_argument("--disks", type=int, default=2, help="full-disk trials (where a tmpfs can be mounted)")
    parser.add_argument("--quick", action="store_true", help="CI size: 2 kills, 1+1 signals, a 5 s lock, 1 disk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.signals, args.lock_seconds, args.disks = 2, 1, 5.0, 1
    rng = random.Random(args.seed)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    from tiny import save_series, write_docs

    with tempfile.TemporaryDirectory(prefix="geowh-faults-") as tmp:
        workdir = Path(tmp)
        save_series(workdir / "run")
        write_docs(workdir / "docs.txt", limit=200)
        ref_db = workdir / "reference.duckdb"
        clock = time.perf_counter()
        first = geowh(workdir, "ingest", "./run", *INGEST, "--db", str(ref_db))
        duration = time.perf_counter() - clock
        if first.returncode != 0:
            raise SystemExit(f"the uninterrupted ingest failed:\n{first.stderr}")
        reference = metrics(ref_db)
        expected: dict[str, int] = {}
        for checkpoint, *_ in reference:
            expected[checkpoint] = expected.get(checkpoint, 0) + 1
        say(f"uninterrupted ingest: {duration:.1f} s, {len(reference)} metric rows")

        figures = Figures()
        trial = 0

        def fresh() -> Path:
            nonlocal trial
            trial += 1
            return workdir / f"t{trial}.duckdb"

        for i in range(args.trials):
            say(f"kill -9 {i + 1}/{args.trials}")
            kill_trial(figures, workdir, fresh(), duration, reference, expected, rng)
        for sig in (signal.SIGINT, signal.SIGTERM):
            for i in range(args.signals):
                say(f"{signal.Signals(sig).name} {i + 1}/{args.signals}")
                signal_trial(figures, workdir, fresh(), duration, reference, expected, rng, sig)
        say(f"a reader holds the file for {args.lock_seconds:g} s")
        lock_trial(figures, workdir, fresh(), duration, reference, expected, rng, args.lock_seconds)
        skipped_disk = False
        for i in range(args.disks):
            say(f"full disk {i + 1}/{args.disks}")
            if not disk_trial(figures, workdir, reference, expected, rng, ref_db.stat().st_size):
                say("  skipped: cannot mount a tmpfs here (needs root on Linux)")
                skipped_disk = True
                break

    total = figures.total()
    if not args.json:
        width = max(map(len, figures.rows)) + 2
        print(f"{'':{width}}" + "".join(f"{c:>15}" for c in COLUMNS))
        for kind, row in [*figures.rows.items(), ("total", total)]:
            print(f"{kind:{width}}" + "".join(f"{row[c]:>15}" for c in COLUMNS))
        print()
        for column, title in zip(COLUMNS, TITLES):
            print(f"{title:28} {total[column]}")
    result = {"total": total, "by_kind": figures.rows, "full_disk_skipped": skipped_disk,
              "uninterrupted_seconds": round(duration, 1), "args": vars(args)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
