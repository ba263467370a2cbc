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

--hostile runs the hostile-input suite instead (--hostile --quick: the CI subset) (issue 18, items 5, 6, 8): each attack is one
`geowh` command in a fresh process, as a user types it (a 300-character file name, a corrupt
Parquet probe, a probe longer than GPT-2's positions, a checkpoint overwritten while it is read,
no network, Ctrl-C in watch, ...). Figures: attacks, tracebacks, crashes by a signal (SIGBUS,
SIGSEGV), hangs (no answer within its time), errors not one line (or not naming what happened),
silent wrong results (exit 0 where a refusal was due, or stored rows that differ from an
undisturbed run) and data lost (a warehouse an attack must not change, changed).

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
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


# -- the hostile-input suite ------------------------------------------------------------------------

HOSTILE_COLUMNS = ("attacks", "tracebacks", "crashes", "hangs", "not_one_line", "silent_wrong", "data_lost")
HOSTILE_TITLES = ("attacks", "tracebacks", "crashes (killed by a signal)", "hangs", "errors not one line",
                  "silent wrong results", "data lost")
LONG = "x" * 300
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # a closed port stands in for the hub, network or not


def _digest(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _hostile_setup(workdir: Path) -> None:
    """The files the attacks use, beside ./run and docs.txt."""
    import polars as pl
    import torch
    from tiny import tokenizer
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50304, n_embd=32, n_layer=1, n_head=2,
                                                       n_positions=16, eos_token_id=0, bos_token_id=0))
    gpt2.save_pretrained(workdir / "gpt2" / "step1")
    tokenizer().save_pretrained(workdir / "gpt2" / "step1")
    (workdir / "nonstring.jsonl").write_text('{"text": 5}\n{"text": ["a"]}\n')
    (workdir / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    pl.DataFrame({"text": [1, 2, 3]}).write_parquet(workdir / "numbers.parquet")
    (workdir / "idx").mkdir()
    (workdir / "idx" / "geowh-index.json").write_text('{"tokenizer": "EleutherAI/gpt-neox-20b", "tok')
    (workdir / "a-file").write_text("")
    (workdir / "t.csv").write_text("model,step,metric,value\nm,1,rankme,3.0\nm,2,rankme,4.0\n")
    geowh(workdir, "import-metrics", "t.csv", "--db", "w.duckdb")
    data = (workdir / "w.duckdb").read_bytes()
    (workdir / "cut.duckdb").write_bytes(data[: len(data) // 3])
    shutil.copytree(workdir / "run" / "step0", workdir / "badcfg" / "step0")
    (workdir / "badcfg" / "step0" / "config.json").write_text('{"model_type": ')
    (workdir / "empty-run").mkdir()


def _attacks(workdir: Path) -> list[dict]:
    """name, argv, expected exit code, words the one error line must hold; `guard`: a file it must not change."""
    tok = str(REPO.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b")
    ingest = ["ingest", "./run", "--probe", "docs.txt", "--n", "8", "--max-len", "16"]
    attacks = [
        dict(name="probe longer than GPT-2's positions", argv=["ingest", "./gpt2", "--probe", "docs.txt", "--n", "8",
             "--max-len", "32", "--db", "g.duckdb"], words=["--max-len 16"]),
        *[dict(name=f"300-character name: {label}", argv=argv, words=["File name too long", "shorten"]) for label, argv in (
            ("sql --db", ["sql", "select 1", "--db", f"{LONG}.duckdb"]),
            ("info --db", ["info", "--db", f"{LONG}.duckdb"]),
            ("ingest --db", [*ingest, "--db", f"{LONG}.duckdb"]),
            ("export", ["export", LONG, "--db", "w.duckdb"]),
            ("metrics", ["metrics", f"{LONG}.npy"]),
            ("sql --out", ["sql", "select 1", "--out", f"{LONG}.csv"]),
        )],
        dict(name=".jsonl with a non-string text", argv=[*ingest[:3], "nonstring.jsonl", "--db", "j.duckdb"],
             words=["not a string"]),
        dict(name="corrupt .parquet probe", argv=[*ingest[:3], "corrupt.parquet", "--db", "p.duckdb"],
             words=["not a readable Parquet file"]),
        dict(name="corrupt .parquet corpus", argv=["index", "build", "corrupt.parquet", "--out", "idx2", "--tokenizer", tok],
             words=["not a readable Parquet file"]),
        dict(name=".parquet text column of numbers", argv=[*ingest[:3], "numbers.parquet", "--db", "p.duckdb"],
             words=["not strings"]),
        dict(name="truncated geowh-index.json", argv=["index", "query", "idx", "the cat"], words=["is damaged"]),
        dict(name="--save-features is a file", argv=[*ingest, "--save-features", "a-file", "--db", "s.duckdb"],
             words=["a file, not a folder"], seconds=20),
        dict(name="--n 1", argv=[*ingest[:5], "1", "--db", "n.duckdb"], words=["at least 2"], forbid=["Covariance"]),
        dict(name="migrate a truncated file", argv=["migrate", "--db", "cut.duckdb"], words=["truncated"],
             guard="cut.duckdb"),
        dict(name="toy --lr nan", argv=["toy", "--lr", "nan", "--steps", "5", "--db", "toy.duckdb"], words=["lr"],
             forbid=["fp16"]),
        dict(name="toy that diverges", argv=["toy", "--lr", "1e6", "--steps", "50", "--db", "toy.duckdb"],
             words=["diverged"], forbid=["fp16"]),
        dict(name="demo --shipped --long --steps", argv=["demo", "--shipped", "--long", "--steps", "5", "--db", "d.duckdb"],
             words=["--shipped trains nothing"]),
        dict(name="corrupt config.json", argv=["ingest", "./badcfg", "--probe", "docs.txt", "--n", "8", "--db", "c.duckdb",
             "--json"], checkpoint_error=["config.json is not a JSON object"], forbid=["tokenizer"]),
        dict(name="uncached hub model offline", argv=["ingest", "hf:org/none", "--revisions", "step1", "--probe",
             "docs.txt", "--n", "8", "--db", "h.duckdb", "--json"],
             env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(workdir / "empty-cache")},
             checkpoint_error=["not in the local hub cache"], forbid=["no tokenizer"]),
        dict(name="offline: --probe fineweb", argv=[*ingest[:3], "fineweb", "--db", "f.duckdb"], env=OFFLINE,
             words=["cannot reach the Hugging Face hub"], seconds=20),
        dict(name="offline: index build --tokenizer hub id", argv=["index", "build", "docs.txt", "--out", "idx3",
             "--tokenizer", "EleutherAI/gpt-neox-20b"], env=OFFLINE, words=["cannot reach the Hugging Face hub"],
             seconds=20),
    ]
    (workdir / "ro").mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(workdir / "ro")],
                      capture_output=True).returncode == 0 or (workdir / "ro").is_mount():
        shutil.copy(workdir / "w.duckdb", workdir / "ro" / "w.duckdb")
        subprocess.run(["mount", "-o", "remount,ro", str(workdir / "ro")], check=True)
        attacks.append(dict(name="read-only warehouse", argv=["import-metrics", "t.csv", "--model", "other", "--db",
                            "ro/w.duckdb"], words=["cannot be written", "Read-only file system"],
                            forbid=["not a readable"], guard="ro/w.duckdb"))
    return attacks


def _run_attack(workdir: Path, attack: dict) -> dict:
    """One attack in a fresh process: what a user would see, judged."""
    guard = workdir / attack["guard"] if attack.get("guard") else None
    before = _digest(guard) if guard else None
    limit = attack.get("seconds", 120)
    started = time.perf_counter()
    try:
        done = subprocess.run([GEOWH, *attack["argv"]], cwd=workdir, capture_output=True, text=True,
                              env=ENV | attack.get("env", {}), timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(attacks=1, hangs=1)
    seconds = time.perf_counter() - started
    err = done.stderr
    figures = dict(attacks=1, tracebacks="Traceback" in err + done.stdout, crashes=done.returncode < 0,
                   hangs=seconds > limit)
    if attack.get("checkpoint_error"):  # the checkpoint fails with the reason, the ingest goes on
        try:
            entries = json.loads(done.stdout)["checkpoints"]
        except (ValueError, KeyError):
            entries = []
        errors = [e.get("error") or "" for e in entries]
        good = done.returncode == 1 and errors and all(
            all(w in e for w in attack["checkpoint_error"]) and not any(f in e for f in attack.get("forbid", []))
            for e in errors)
        figures["not_one_line"] = done.returncode in (1,) and not good
        figures["silent_wrong"] = done.returncode == 0
    else:
        lines = [line for line in err.splitlines() if line.startswith(("error:", "stopped"))]
        good = (done.returncode == attack.get("code", 1) and len(lines) == 1
                and all(w in lines[0] for w in attack.get("words", []))
                and not any(f in lines[0] for f in attack.get("forbid", [])))
        figures["not_one_line"] = done.returncode > 0 and not good
        figures["silent_wrong"] = done.returncode == 0
    figures["data_lost"] = guard is not None and _digest(guard) != before
    return figures


HAMMER = """
import sys, time
from pathlib import Path
files = [Path(p) for p in sys.argv[2:]]
data = {f: f.read_bytes() for f in files}
print("hammering", flush=True)
stop = time.time() + float(sys.argv[1])
while time.time() < stop:
    for f, b in data.items():
        with open(f, "r+b") as h:  # in place, as a training saving over its checkpoint does
            h.truncate(len(b) // 4)
            h.flush()
            time.sleep(0.002)
            h.seek(0)
            h.write(b)
for f, b in data.items():
    f.write_bytes(b)
"""


def _overwritten_while_read(workdir: Path, reference: list, seconds: float) -> dict:
    """An ingest while every weight file is cut and rewritten in place (SIGBUS through mmap before):
    no crash, no traceback; each checkpoint is failed with a line naming its file or stored exactly
    as an undisturbed ingest stores it; the resume afterwards completes the series bit for bit."""
    run = workdir / "hammered"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(workdir / "run", run)
    db = workdir / "hammered.duckdb"
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, str(seconds), *map(str, run.glob("*/model.safetensors"))],
                              stdout=subprocess.PIPE, text=True)
    hammer.stdout.readline()
    hurt = geowh(workdir, "ingest", "./hammered", *INGEST, "--db", str(db), "--json")
    hammer.wait()
    figures = dict(attacks=1, tracebacks="Traceback" in hurt.stderr, crashes=hurt.returncode < 0)
    try:
        entries = json.loads(hurt.stdout)["checkpoints"]
    except (ValueError, KeyError):
        entries = []
    failed = [e for e in entries if e["status"] == "failed"]
    figures["not_one_line"] = hurt.returncode > 0 and not entries or any(
        "changed while it was being read" not in e["error"] and "cannot load" not in e["error"] for e in failed)
    stored = {r for r in metrics(db)} if db.exists() else set()
    figures["silent_wrong"] = bool(stored - {r for r in _renamed(reference)})
    resume = geowh(workdir, "ingest", "./hammered", *INGEST, "--db", str(db))
    figures["data_lost"] = resume.returncode != 0 or not same(metrics(db), _renamed(reference))
    return figures


def _renamed(reference: list) -> list:
    return reference  # the model is named by its folder, and the metric rows carry only the checkpoint


def _watch_ctrl_c(workdir: Path) -> dict:
    proc = subprocess.Popen([GEOWH, "watch", "./empty-run", "--probe", "docs.txt", "--db", "watch.duckdb",
                             "--interval", "0.2"], cwd=workdir, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(20)  # past the imports (a Ctrl-C during them is another case), on a loaded machine too
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return dict(attacks=1, hangs=1)
    lines = [line for line in err.splitlines() if line.startswith(("error:", "stopped by"))]
    return dict(attacks=1, tracebacks="Traceback" in err, crashes=proc.returncode < 0,
                not_one_line=proc.returncode != 130 or len(lines) != 1, silent_wrong=proc.returncode == 0)


def _not_ray(workdir: Path) -> dict | None:
    import importlib.util
    import socket

    if importlib.util.find_spec("ray") is None:
        return None
    server = socket.create_server(("127.0.0.1", 0))  # accepts, then says nothing Ray understands
    try:
        done = geowh(workdir, "ingest", "./run", *INGEST, "--db", "ray.duckdb", "--ray",
                     f"127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return dict(attacks=1, tracebacks="Traceback" in done.stderr, crashes=done.returncode < 0,
                not_one_line=done.returncode != 1 or len(lines) != 1, silent_wrong=done.returncode == 0)


QUICK_ATTACKS = ("300-character name: ingest --db", "offline: --probe fineweb", "offline: index build --tokenizer hub id",
                 "read-only warehouse", "migrate a truncated file")
"""--hostile --quick (CI): the attacks that only a fresh process shows (signals, imports, timing) or
that need root; tests/test_hostile.py checks the others in-process."""


def hostile(workdir: Path, reference: list, say, hammer_seconds: float,
            quick: bool = False) -> dict[str, dict[str, int]]:
    """Every attack of the hostile-input suite (with `quick`, those of QUICK_ATTACKS and the
    overwritten checkpoint, Ctrl-C in watch, --ray): figures per attack."""
    _hostile_setup(workdir)
    rows: dict[str, dict[str, int]] = {}

    def record(name: str, figures: dict | None) -> None:
        if figures is not None:
            rows[name] = {k: int(figures.get(k, 0)) for k in HOSTILE_COLUMNS}
            bad = [k for k in HOSTILE_COLUMNS[1:] if rows[name][k]]
            say(f"  {name}: {'ok' if not bad else 'FAILED ' + ', '.join(bad)}")

    try:
        for attack in _attacks(workdir):
            if not quick or attack["name"] in QUICK_ATTACKS:
                record(attack["name"], _run_attack(workdir, attack))
    finally:
        subprocess.run(["umount", "-l", str(workdir / "ro")], capture_output=True)
    record("checkpoint overwritten while read", _overwritten_while_read(workdir, reference, hammer_seconds))
    record("Ctrl-C in watch", _watch_ctrl_c(workdir))
    record("--ray at an address that is not Ray", _not_ray(workdir))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials")
    parser.add_argument("--signals", type=int, default=4, help="SIGINT trials, and as many SIGTERM")
    parser.add_argument("--lock-seconds", type=float, default=90.0, help="how long a reader holds the file")
    parser.add_argument("--disks", type=int, default=2, help="full-disk trials (where a tmpfs can be mounted)")
    parser.add_argument("--quick", action="store_true", help="CI size: 2 kills, 1+1 signals, a 5 s lock, 1 disk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--hostile", action="store_true", help="the hostile-input suite instead of the faults")
    parser.add_argument("--hammer-seconds", type=float, default=60.0,
                        help="--hostile: how long the weight files are rewritten while an ingest reads them")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.signals, args.lock_seconds, args.disks = 2, 1, 5.0, 1
        if args.hostile:
            args.hammer_seconds = min(args.hammer_seconds, 10.0)
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
        if args.hostile:
            return _report_hostile(hostile(workdir, reference, say, args.hammer_seconds, quick=args.quick), args,
                                   duration)

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


def _report_hostile(rows: dict[str, dict[str, int]], args, duration: float) -> dict:
    total = {k: sum(r[k] for r in rows.values()) for k in HOSTILE_COLUMNS}
    if not args.json:
        width = max(map(len, rows)) + 2
        print(f"{'':{width}}" + "".join(f"{c:>14}" for c in HOSTILE_COLUMNS))
        for name, row in [*rows.items(), ("total", total)]:
            print(f"{name:{width}}" + "".join(f"{row[c]:>14}" for c in HOSTILE_COLUMNS))
        print()
        for column, title in zip(HOSTILE_COLUMNS, HOSTILE_TITLES):
            print(f"{title:30} {total[column]}")
    result = {"total": total, "by_attack": rows, "uninterrupted_seconds": round(duration, 1), "args": vars(args)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
