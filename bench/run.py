"""Benchmark: the same handler work (one UPDATE per signal) wired ten ways.

    nox -s bench                          # N = 2,000, 20,000 and 100,000
    nox -s bench -- --sizes 2000          # a quick run (no hot row)
    nox -s bench -- --sizes 2000 --hot 2000  # a quick run with the hot row
    nox -s bench -- --e2e-max 100000      # unbatched modes end to end at every N
    nox -s bench -- --modes batch outbox  # some of the modes
    nox -s bench -- --report bench/results/measurements.jsonl  # redraw a run
    nox -s bench -- --previous            # the cost of previous= per save

For each backend and each N, the N rows are saved in one transaction, and for
each mode it measures:

- the request path: time per save, the commit and the queuing included, with
  no worker running (best of five at N = 2,000);
- memory: bytes the request process holds per deferred call until the commit,
  and its peak at the commit (tracemalloc, in a run of its own);
- what is queued: tasks, and bytes per call;
- end to end: from the first save until a two-worker qcluster, already
  running, has run every handler (best of three at N = 2,000), and the part
  of it after the commit. Unbatched modes queue a task per save, so they run
  end to end only up to --e2e-max saves (20,000 by default).

One row saved again and again, each save its own transaction, is measured
apart (--hot COMMITS; 2,000 unless --sizes is given): a handler that takes
50 ms, with outbox=True and with supersede=True too; for each, the request
path per commit, the time from the first commit until the outbox is empty,
and how many times the handler ran. Without supersede every commit's call
runs: about a minute.

Two modes are there to compare with: the work done in the request once the
transaction has committed, and a plain @receiver queuing each call with
async_task on commit. They run up to --e2e-max saves. The coalescing mode
saves each row three times (a create and two updates): 3N saves for N rows.

The backends: SQLite with the ORM broker, in WAL mode and in its default
journal mode (delete); when PostgreSQL answers on 127.0.0.1, PostgreSQL with
the ORM broker, and with Redis when that answers too. BENCH_DATABASE_URL and
BENCH_REDIS_URL name the PostgreSQL database (the run recreates it, and one
with "_orm" added) and the Redis database (the run empties it).

It prints a table and the targets, and writes bench/results/results.md and
bench/results/scale.png. The documentation's performance page shows a run of
it (docs/performance.md, docs/_static/).

With --previous it only compares, at the first size, a receiver with
previous=["n"] and the same receiver without it: the request path per save of
a create, of an update of loaded instances and of one of instances built by
hand, each in one transaction, and the time to load a row (previous= keeps
the loaded values); best of three. It prints a table.

This module chooses the backends and runs each in a process of its own,
bench/child.py, which measures; bench/report.py prints and writes the report,
and bench/targets.py checks the targets. bench/modes.py names what is
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.modes import HOT, MODES, RESULTS, ROOT
from bench.report import report, report_previous

POSTGRES = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/django_q_signals_bench"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def main() -> None:
    args = parse_arguments()
    if args.previous:
        compare_previous(args.sizes[0])
    elif args.report:
        report([json.loads(line) for line in args.report.read_text().splitlines()])
    else:
        report(measure_all(args.sizes, args.e2e_max, args.modes, args.hot))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--e2e-max", type=int, default=20000)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--hot",
        type=int,
        metavar="COMMITS",
        help="commits of the hot row (2,000 unless --sizes is given; 0: none)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="only write the report, from the measurements a run saved in FILE",
    )
    parser.add_argument(
        "--previous",
        action="store_true",
        help="only compare a receiver with previous= and the same without it",
    )
    args = parser.parse_args()
    if args.hot is None:
        args.hot = 0 if args.sizes else 2000
    args.sizes = args.sizes or [2000, 20000, 100000]
    return args


def measure_all(
    sizes: list[int], e2e_max: int, modes: list[str], hot: int
) -> list[dict[str, Any]]:
    """Every backend's measurements, each printed and saved to
    bench/results/measurements.jsonl as it comes: a long run that stops half
    way still leaves what it measured (see --report)."""
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "measurements.jsonl"
    saved.write_text("")
    arguments = ["--sizes", *map(str, sizes), "--e2e-max", str(e2e_max)]
    arguments += ["--modes", *modes, "--hot", str(hot)]
    rows = []
    for backend, env in backends():
        print(f"Measuring {backend} ...", flush=True)
        for line in measurements(backend, env, arguments):
            row = json.loads(line)
            rows.append(row)
            with saved.open("a") as out:
                out.write(line)
            print(f"  {progress(row)}", flush=True)
    return rows


def compare_previous(n: int) -> None:
    rows = []
    for backend, env in backends():
        print(f"Measuring {backend} ...", flush=True)
        arguments = ["--previous", "--sizes", str(n)]
        rows += [json.loads(line) for line in measurements(backend, env, arguments)]
    report_previous(rows, n)


def measurements(
    backend: str, env: dict[str, str], arguments: list[str]
) -> Iterator[str]:
    """The lines of a child process measuring ``backend`` (bench/child.py),
    as they come; the run stops if it fails."""
    # Only the backend's own services: none of the tests' in the shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNALS_")}
    with subprocess.Popen(
        [sys.executable, "-m", "bench.child", backend, *arguments],
        env={**inherited, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        yield from child.stdout
    if child.returncode:
        sys.exit(f"{backend} failed (exit code {child.returncode})")


def progress(row: dict[str, Any]) -> str:
    e2e = row["end_to_end_s"]
    if row["mode"] in HOT:
        return (
            f"{row['commits']:>7,} {row['mode']:<13} "
            f"{row['per_commit_us']:.0f} µs a commit, end to end {e2e:.2f} s, "
            f"{row['runs']:,} runs"
        )
    text = f"{row['n']:>7,} {row['mode']:<13} {row['per_save_us']:.0f} µs a save"
    return text if e2e is None else f"{text}, end to end {e2e:.2f} s"


def backends() -> list[tuple[str, dict[str, str]]]:
    found = [
        (
            f"SQLite ({journal}) + ORM broker",
            {"BENCH_DB": sqlite, "BENCH_JOURNAL": journal},
        )
        for journal, sqlite in (
            ("WAL", f"{tempfile.mkdtemp()}/b.sqlite3"),
            ("delete", f"{tempfile.mkdtemp()}/b.sqlite3"),
        )
    ]
    if not answers(5432):
        print("PostgreSQL does not answer on 127.0.0.1: SQLite only.")
        return found
    if answers(6379):
        fresh_database(POSTGRES)
        found.append(
            (
                "PostgreSQL + Redis",
                {"QSIGNALS_DATABASE_URL": POSTGRES, "QSIGNALS_REDIS_URL": REDIS},
            )
        )
    else:
        print(
            "Redis does not answer on 127.0.0.1: PostgreSQL with the ORM broker only."
        )
    fresh_database(f"{POSTGRES}_orm")
    found.append(
        ("PostgreSQL + ORM broker", {"QSIGNALS_DATABASE_URL": f"{POSTGRES}_orm"})
    )
    return found


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def fresh_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    main()
