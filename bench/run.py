"""Benchmark: the same handler work (one UPDATE per signal) wired eight ways.

    nox -s bench                          # N = 2,000, 20,000 and 100,000
    nox -s bench -- --sizes 2000          # a quick run
    nox -s bench -- --e2e-max 100000      # unbatched modes end to end at every N
    nox -s bench -- --modes batch outbox  # some of the modes
    nox -s bench -- --report bench/results/measurements.jsonl  # redraw a run

For each backend and each N, the N rows are saved in one transaction, and for
each mode it measures:

- the request path: time per save, the commit and the queuing included, with
  no worker running (best of three at N = 2,000);
- memory: bytes the request process holds per deferred call until the commit,
  and its peak at the commit (tracemalloc, in a run of its own);
- what is queued: tasks, and bytes per call;
- end to end: from the first save until a two-worker qcluster, already
  running, has run every handler (best of three at N = 2,000), and the part
  of it after the commit. Unbatched modes queue a task per save, so they run
  end to end only up to --e2e-max saves (20,000 by default).

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
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# mode: (model, label, saves per row)
MODES = {
    "floor": ("FloorItem", "no receiver (floor)", 1),
    "inline": ("InlineItem", "the work in the request, after the commit", 1),
    "manual": ("ManualItem", "@receiver + on_commit(async_task)", 1),
    "default": ("DefaultItem", "async_receiver()", 1),
    "batch": ("BatchItem", "batch=True", 1),
    "coalesce": ("CoalesceItem", "batch=True, coalesce=True (3 saves a row)", 3),
    "outbox": ("OutboxItem", "outbox=True", 1),
    "outbox_batch": ("OutboxBatchItem", "outbox=True, batch=True", 1),
}
#: A task per save: end to end only up to --e2e-max saves.
UNBATCHED = {"manual", "default", "outbox"}
#: Done when the request is: nothing is queued.
QUEUELESS = {"floor", "inline"}
#: Measured to compare the others' end to end with: up to --e2e-max saves.
REFERENCES = {"inline", "manual"}
POSTGRES = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/django_q_signals_bench"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--e2e-max", type=int, default=20000)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="only write the report, from the measurements a run saved in FILE",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.sizes, args.e2e_max, args.modes)
        return
    if args.report:
        report([json.loads(line) for line in args.report.read_text().splitlines()])
        return
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "measurements.jsonl"
    saved.write_text("")
    rows = []
    for backend, env in backends():
        print(f"Measuring {backend} ...", flush=True)
        command = [sys.executable, __file__, "--child", backend, "--sizes"]
        command += [str(n) for n in args.sizes]
        command += ["--e2e-max", str(args.e2e_max), "--modes", *args.modes]
        # Each measurement is printed and saved as it comes: a long run that
        # stops half way still leaves what it measured (see --report).
        # Only the backend's own services: none of the tests' in the shell.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("QSIGNALS_")
        }
        with subprocess.Popen(
            command,
            env={**inherited, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                row = json.loads(line)
                rows.append(row)
                with saved.open("a") as out:
                    out.write(line)
                print(f"  {row['n']:>7,} {row['mode']:<13} {progress(row)}", flush=True)
        if child.returncode:
            sys.exit(f"{backend} failed (exit code {child.returncode})")
    report(rows)


def progress(row: dict[str, Any]) -> str:
    e2e = row["end_to_end_s"]
    text = f"{row['per_save_us']:.0f} µs a save"
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


# --- in the child process, with Django set up for one backend ---------------


def measure(backend: str, sizes: list[int], e2e_max: int, modes: list[str]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    for n in sizes:
        for mode in modes:
            if mode in REFERENCES and n > e2e_max:
                continue
            result = run_one(mode, n, e2e=mode not in UNBATCHED or n <= e2e_max)
            print(json.dumps({"backend": backend, **result}), flush=True)


def run_one(mode: str, n: int, *, e2e: bool) -> dict[str, Any]:
    from django.apps import apps

    model = apps.get_model("bench", MODES[mode][0])
    saves = MODES[mode][2]
    held, peak = memory(model, n, saves)
    # Best of three where runs are short: one run is at the mercy of the
    # machine's other work.
    trials = 3 if n <= 2000 else 1
    request = min(save(model, n, saves) for _ in range(trials))
    tasks, size = queued()
    result = {
        "mode": mode,
        "n": n,
        "signals": n * saves,
        "per_save_us": request / (n * saves) * 1e6,
        "held_per_call": held,
        "peak_per_call": peak,
        "tasks": tasks,
        "bytes": size,
        "end_to_end_s": None,
        "after_commit_s": None,
        "missed": 0,
    }
    if not e2e:
        return result
    if mode in QUEUELESS:
        result["end_to_end_s"] = request
        result["after_commit_s"] = 0.0
        return result
    processed = model.objects.filter(processed=True)
    clear(model)  # Nothing of the runs above may reach the worker.
    runs = []
    with running_worker():
        for _ in range(trials):
            started = time.perf_counter()
            committed = started + save(model, n, saves)
            finished, missed = wait_for_handlers(processed, n)
            runs.append((finished - started, finished - committed, missed))
    # The fastest run: the others were slowed down by something else.
    e2e, after, result["missed"] = min(runs)
    result["end_to_end_s"], result["after_commit_s"] = e2e, after
    return result


def save(model: Any, n: int, saves: int) -> float:
    """Save ``n`` rows (each ``saves`` times) in one transaction, on an empty
    table and queue; the seconds it took, the commit included."""
    from django.db import transaction

    clear(model)
    started = time.perf_counter()
    with transaction.atomic():
        _saves(model, n, saves)
    return time.perf_counter() - started


def _saves(model: Any, n: int, saves: int) -> None:
    items = [model.objects.create(n=i) for i in range(n)]
    for _ in range(saves - 1):
        for item in items:
            item.n += 1
            item.save(update_fields=["n"])


def memory(model: Any, n: int, saves: int) -> tuple[float, float]:
    """Bytes held per deferred call just before the commit, and the peak at
    the commit, per call."""
    from django.db import transaction

    clear(model)
    gc.collect()
    tracemalloc.start()
    with transaction.atomic():
        model.objects.create(n=-1)  # warm: caches, the first group
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        _saves(model, n, saves)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.reset_peak()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return held / n, max(peak, held) / n


def clear(model: Any) -> None:
    from django_q_signals.models import OutboxCall

    model._base_manager.all().delete()
    OutboxCall.objects.all().delete()
    purge_queue()


def wait_for_handlers(processed: Any, n: int) -> tuple[float, int]:
    """When the last row was processed, and how many never were.

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
    return changed, n - done


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


# --- in the parent: the table, the targets and the chart ---------------------


COLUMNS = (
    "backend",
    "N",
    "mode",
    "request path per save",
    "held per call",
    "peak per call",
    "tasks",
    "bytes per call",
    "end to end",
    "after the commit",
    "signals/s",
    "never processed",
)


def report(rows: list[dict[str, Any]]) -> None:
    lines = [
        f"| {' | '.join(COLUMNS)} |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        e2e = row["end_to_end_s"]
        cells = [
            row["backend"],
            f"{row['n']:,}",
            MODES[row["mode"]][1],
            f"{row['per_save_us']:.0f} µs",
            f"{row['held_per_call']:.0f} B",
            f"{row['peak_per_call']:.0f} B",
            f"{row['tasks']:,}",
            f"{row['bytes'] / row['signals']:.0f} B",
            "-" if e2e is None else f"{e2e:.2f} s",
            "-" if e2e is None else f"{row['after_commit_s']:.2f} s",
            "-" if e2e is None else f"{row['signals'] / e2e:,.0f}",
            f"{row['missed']:,}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    machine = describe_machine()
    print("\n".join(lines))
    print(f"\n{machine}")
    print("\nTargets:")
    checked = targets(rows)
    for line in checked:
        print(f"- {line}")
    RESULTS.mkdir(exist_ok=True)
    text = "\n".join(
        [*lines, "", machine, "", "Targets:", *(f"- {t}" for t in checked)]
    )
    (RESULTS / "results.md").write_text(text + "\n")
    chart(rows, RESULTS / "scale.png")
    print(f"\nWrote {RESULTS / 'results.md'} and {RESULTS / 'scale.png'}")


def describe_machine() -> str:
    from importlib.metadata import version

    import django

    return (
        f"Measured on {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"Django {django.get_version()}, Django Q2 {version('django-q2')}, "
        f"django-q-signals {version('django-q-signals')}."
    )


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Each target, its value and whether it is met."""
    by = {(r["backend"], r["n"], r["mode"]): r for r in rows}
    out: list[str] = []

    def check(what: str, mine: Any, theirs: Any, limit: float) -> None:
        if mine is None or theirs is None:
            return
        value = mine / theirs if theirs else float("inf")
        out.append(f"{what}: {value:.2f} ({'met' if value <= limit else 'NOT met'})")

    def per_call(row: dict[str, Any]) -> float:
        return float(row["bytes"]) / row["signals"]

    def per_task(row: dict[str, Any]) -> float:
        return float(row["bytes"]) / row["tasks"]

    def value(backend: str, n: int, mode: str, get: Any) -> Any:
        row = by.get((backend, n, mode))
        return None if row is None else get(row)

    label = {mode: spec[1] for mode, spec in MODES.items()}
    for backend in sorted({r["backend"] for r in rows}):
        sizes = sorted({r["n"] for r in rows if r["backend"] == backend})
        first, last = sizes[0], sizes[-1]
        for mode, base in (("outbox", "default"), ("outbox_batch", "batch")):
            for metric, key, limit in (
                ("request path", "per_save_us", 1.5),
                ("end to end", "end_to_end_s", 1.3),
            ):
                check(
                    f"{backend}, {first:,}: {label[mode]} {metric} / {label[base]} "
                    f"(at most {limit}x)",
                    value(backend, first, mode, lambda r, k=key: r[k]),
                    value(backend, first, base, lambda r, k=key: r[k]),
                    limit,
                )
        for mode in MODES:
            if mode in QUEUELESS or last == first:
                continue
            for metric, get in (
                ("request path per save", lambda r: r["per_save_us"]),
                ("bytes queued per call", per_call),
            ):
                if mode == "manual" and metric.startswith("bytes"):
                    continue  # Django Q2's random task names
                check(
                    f"{backend}: {label[mode]} {metric}, {last:,} / {first:,} "
                    "(at most 1.2x)",
                    value(backend, last, mode, get),
                    value(backend, first, mode, get),
                    1.2,
                )
        for n in sizes:

            def at(mode: str, get: Any, n: int = n, backend: str = backend) -> Any:
                return value(backend, n, mode, get)

            where = f"{backend}, {n:,}"
            for mode in ("default", "batch"):
                check(
                    f"{where}: {label[mode]} bytes held per deferred call / 300 "
                    "(at most 1.0x)",
                    at(mode, lambda r: r["held_per_call"]),
                    300,
                    1.0,
                )
            check(
                f"{where}: bytes of an unbatched task / a hand-written one "
                "(at most 1.0x)",
                at("default", per_task),
                at("manual", per_task),
                1.0,
            )
            check(
                f"{where}: bytes per call in a batch task / 100 (at most 1.0x)",
                at("batch", per_call),
                100,
                1.0,
            )
            check(
                f"{where}: {label['default']} request path / hand-written "
                "(at most 1.0x)",
                at("default", lambda r: r["per_save_us"]),
                at("manual", lambda r: r["per_save_us"]),
                1.0,
            )
            check(
                f"{where}: {label['default']} end to end / hand-written (at most 1.0x)",
                at("default", lambda r: r["end_to_end_s"]),
                at("manual", lambda r: r["end_to_end_s"]),
                1.0,
            )
            check(
                f"{where}: batch=True end to end / the floor (at most 1.3x)",
                at("batch", lambda r: r["end_to_end_s"]),
                at("floor", lambda r: r["end_to_end_s"]),
                1.3,
            )
            for metric, key in (
                ("end to end", "end_to_end_s"),
                ("after the commit", "after_commit_s"),
            ):
                check(
                    f"{where}: coalesce=True, 3 saves a row / batch=True, 1 save a "
                    f"row, {metric} (at most 1.2x)",
                    at("coalesce", lambda r, k=key: r[k]),
                    at("batch", lambda r, k=key: r[k]),
                    1.2,
                )
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r["backend"] for r in rows})
    panels = (
        ("request path per save (µs)", lambda r: r["per_save_us"]),
        # The floor defers nothing: what it holds is noise.
        (
            "bytes held per deferred call",
            lambda r: None if r["mode"] == "floor" else r["held_per_call"],
        ),
        ("bytes queued per call", lambda r: r["bytes"] / r["signals"] or None),
        ("end to end (s)", lambda r: r["end_to_end_s"]),
    )
    fig, axes = plt.subplots(
        len(backends), len(panels), figsize=(18, 4.2 * len(backends)), squeeze=False
    )
    # One colour a mode in every panel, whichever modes a panel leaves out.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # 10 colours
    colours = dict(zip(MODES, palette, strict=False))
    for row_axes, backend in zip(axes, backends, strict=True):
        for ax, (title, value) in zip(row_axes, panels, strict=True):
            for mode, (_, label, _) in MODES.items():
                points = sorted(
                    (r["n"], value(r))
                    for r in rows
                    if r["backend"] == backend and r["mode"] == mode
                )
                points = [(n, v) for n, v in points if v]
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        marker="o",
                        label=label,
                        color=colours[mode],
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N saves in one transaction (log)")
            ax.set_title(f"{backend}: {title}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
