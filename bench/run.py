"""Benchmark: the same handler work (one UPDATE per signal) wired five ways.

    nox -s bench                      # N = 2,000 and 20,000
    nox -s bench -- --sizes 500       # a quick run

For each backend (SQLite with the ORM broker; PostgreSQL with Redis when both
answer on 127.0.0.1), each N and each scenario (all saves in one transaction,
or each save in autocommit), it measures per mode: the request path (time per
save, commit included, with no worker running), the tasks and bytes queued,
and the time from the first save until a real two-worker qcluster, already
running, has run every handler. It prints a table and writes a chart of
signals per second to bench/results/.

The documentation's Performance page (docs/performance.md) shows the table
and chart of a `--sizes 2000` run; its chart is docs/_static/performance-2000.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODES = {
    "floor": ("FloorItem", "no receiver (floor)"),
    "manual": ("ManualItem", "@receiver + async_task"),
    "eager": ("EagerItem", "async_receiver(on_commit=False)"),
    "default": ("DefaultItem", "async_receiver()"),
    "batch": ("BatchItem", "async_receiver(batch=True)"),
}
SCENARIOS = ("transaction", "autocommit")
POSTGRES = "postgres://postgres@127.0.0.1:5432/django_q_signals_bench"
REDIS = "redis://127.0.0.1:6379/14"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.sizes)
        return
    rows = []
    for backend, env in backends():
        print(f"Measuring {backend} ...", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--child", backend, "--sizes"]
            + [str(n) for n in args.sizes],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode:
            sys.exit(f"{backend} failed:\n{child.stdout}\n{child.stderr}")
        rows += [json.loads(line) for line in child.stdout.splitlines()]
    report(rows)


def backends() -> list[tuple[str, dict[str, str]]]:
    found = [("SQLite + ORM broker", {"BENCH_DB": f"{tempfile.mkdtemp()}/b.sqlite3"})]
    if answers(5432) and answers(6379):
        create_database(POSTGRES)
        found.append(
            (
                "PostgreSQL + Redis",
                {"QSIGNALS_DATABASE_URL": POSTGRES, "QSIGNALS_REDIS_URL": REDIS},
            )
        )
    else:
        print("PostgreSQL or Redis does not answer on 127.0.0.1: SQLite only.")
    return found


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def create_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as db:
        if not db.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone():
            db.execute(f'CREATE DATABASE "{name}"')


# --- in the child process, with Django set up for one backend ---------------


def measure(backend: str, sizes: list[int]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    for n in sizes:
        for scenario in SCENARIOS:
            for mode in MODES:
                result = run_one(mode, n, scenario)
                print(json.dumps({"backend": backend, **result}), flush=True)
    print(json.dumps({"backend": backend, "reload_queries": reload_queries()}))


def run_one(mode: str, n: int, scenario: str) -> dict[str, Any]:
    """The request path with no worker running, then end to end with one."""
    from django.apps import apps

    model = apps.get_model("bench", MODES[mode][0])
    # Best of three where a run is short: one run is at the mercy of the
    # machine's other work.
    trials = 3 if scenario == "transaction" else 1
    request = min(save(model, n, scenario) for _ in range(trials))
    tasks, size = queued()
    end_to_end = request
    if mode != "floor":
        processed = model.objects.filter(processed=True)
        # Nothing of the first run may reach the worker.
        model.objects.all().delete()
        purge_queue()
        with running_worker():
            started = time.perf_counter()
            save(model, n, scenario)
            end_to_end, missed = wait_for_handlers(processed, n, started)
    return {
        "mode": mode,
        "n": n,
        "scenario": scenario,
        "per_save_us": request / n * 1e6,
        "tasks": tasks,
        "bytes": size,
        "end_to_end_s": end_to_end,
        "missed": missed if mode != "floor" else 0,
    }


def wait_for_handlers(processed: Any, n: int, started: float) -> tuple[float, int]:
    """Seconds until every row is processed, and how many never were.

    A handler that ran before the commit found no row and processed nothing:
    once the queue is empty and nothing has changed for 5 s, that is final.
    """
    done, changed = 0, time.perf_counter()
    while done < n:
        time.sleep(0.02)
        count = processed.count()
        if count != done:
            done, changed = count, time.perf_counter()
        elif time.perf_counter() - changed > 5 and queued()[0] == 0:
            break
    return changed - started, n - done


def save(model: Any, n: int, scenario: str) -> float:
    """Save ``n`` rows on an empty table and queue; the seconds it took."""
    from django.db import transaction

    model.objects.all().delete()
    purge_queue()
    started = time.perf_counter()
    if scenario == "transaction":
        with transaction.atomic():
            for i in range(n):
                model.objects.create(n=i)
    else:
        for i in range(n):
            model.objects.create(n=i)
    return time.perf_counter() - started


def purge_queue() -> None:
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        OrmQ.objects.using(Conf.ORM).all().delete()
    else:
        get_broker().connection.flushdb()


def queued() -> tuple[int, int]:
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        payloads = list(OrmQ.objects.using(Conf.ORM).values_list("payload", flat=True))
    else:
        broker = get_broker()
        payloads = broker.connection.lrange(broker.list_key, 0, -1)
    return len(payloads), sum(len(p) for p in payloads)


@contextlib.contextmanager
def running_worker() -> Iterator[None]:
    """A 2-worker qcluster, started and settled before the block runs."""
    from django.db import connections

    connections.close_all()
    RESULTS.mkdir(exist_ok=True)
    log = (RESULTS / "qcluster.log").open("a")
    worker = subprocess.Popen(
        [sys.executable, "-m", "django", "qcluster"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(2)  # started, workers forked, polling
        if worker.poll() is not None:
            raise RuntimeError("the worker stopped")
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            log.close()


def reload_queries() -> int:
    """SELECTs the worker runs to reload one batch of 500 calls."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django_q.signing import SignedPackage

    from bench.models import BatchItem
    from django_q_signals.worker import run_batch

    BatchItem.objects.all().delete()
    purge_queue()
    with transaction.atomic():
        for i in range(500):
            BatchItem.objects.create(n=i)
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        pack = OrmQ.objects.using(Conf.ORM).get().payload
    else:
        from django_q.brokers import get_broker

        broker = get_broker()
        pack = broker.connection.lpop(broker.list_key)
    task = SignedPackage.loads(pack)
    with CaptureQueriesContext(connection) as queries:
        run_batch(*task["args"])
    return sum(q["sql"].lstrip().upper().startswith("SELECT") for q in queries)


# --- in the parent: the table and the chart ---------------------------------


COLUMNS = (
    "backend",
    "N",
    "scenario",
    "mode",
    "request path per save",
    "tasks",
    "bytes queued",
    "end to end",
    "signals/s end to end",
    "rows never processed",
)


def report(rows: list[dict[str, Any]]) -> None:
    runs = [row for row in rows if "mode" in row]
    lines = [
        f"| {' | '.join(COLUMNS)} |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in runs:
        cells = [
            row["backend"],
            f"{row['n']:,}",
            row["scenario"],
            MODES[row["mode"]][1],
            f"{row['per_save_us']:.0f} µs",
            f"{row['tasks']:,}",
            f"{row['bytes']:,}",
            f"{row['end_to_end_s']:.2f} s",
            f"{row['n'] / row['end_to_end_s']:,.0f}",
            f"{row['missed']:,}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    print("\n".join(lines))
    for row in rows:
        if "reload_queries" in row:
            print(
                f"\n{row['backend']}: the worker reloads a batch of 500 calls' rows "
                f"with {row['reload_queries']} query(s)."
            )
    print("\nTargets:")
    for line in targets(runs):
        print(f"- {line}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    chart(runs, RESULTS / "signals-per-second.png")
    print(f"\nWrote {RESULTS / 'results.md'} and {RESULTS / 'signals-per-second.png'}")


def targets(runs: list[dict[str, Any]]) -> list[str]:
    by = {(r["backend"], r["n"], r["scenario"], r["mode"]): r for r in runs}
    out = []
    for backend, n, scenario in sorted({key[:3] for key in by}):
        run = {mode: by[backend, n, scenario, mode] for mode in MODES}
        where = f"{backend}, {n:,} saves, {scenario}"
        default = run["default"]["per_save_us"] / run["manual"]["per_save_us"]
        batch = run["batch"]["per_save_us"] / run["floor"]["per_save_us"]
        out.append(
            f"{where}: default request path {default:.2f}x hand-written async_task "
            f"({'met' if default <= 1.15 else 'NOT met'}: within 1.15x); batch=True "
            f"{batch:.2f}x the floor ({'met' if batch <= 2 else 'NOT met'}: within 2x)"
        )
        if scenario == "transaction":
            speedup = run["manual"]["end_to_end_s"] / run["batch"]["end_to_end_s"]
            out.append(
                f"{where}: batch=True end to end {speedup:.1f}x hand-written "
                f"async_task ({'met' if speedup >= 10 else 'NOT met'}: at least 10x)"
            )
    return out


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["backend"], r["n"], r["scenario"]) for r in runs})
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(groups)), 5))
    width = 0.8 / len(MODES)
    for index, mode in enumerate(MODES):
        values = [
            next(
                r["n"] / r["end_to_end_s"]
                for r in runs
                if (r["backend"], r["n"], r["scenario"], r["mode"]) == (*group, mode)
            )
            for group in groups
        ]
        ax.bar(
            [g + index * width for g in range(len(groups))],
            values,
            width,
            label=MODES[mode][1],
        )
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{b}\n{n:,} saves, {s}" for b, n, s in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("signals handled per second, end to end (log)")
    ax.set_title("django-q-signals: saves until every handler has run (2 workers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
