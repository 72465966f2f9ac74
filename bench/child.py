"""One backend's measurements, in a process of its own with Django set up for
that backend; run.py starts it. Each measurement is printed as a JSON line.

    python -m bench.child BACKEND --sizes N... --e2e-max N --modes MODE... [--hot N]
    python -m bench.child BACKEND --previous --sizes N
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from bench.modes import (
    HOT,
    MODES,
    PREVIOUS_CASES,
    QUEUELESS,
    REFERENCES,
    RESULTS,
    ROOT,
    UNBATCHED,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend")
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--e2e-max", type=int)
    parser.add_argument("--modes", nargs="+", choices=MODES)
    parser.add_argument("--hot", type=int, default=0)
    parser.add_argument("--previous", action="store_true")
    args = parser.parse_args()
    if args.previous:
        measure_previous(args.backend, args.sizes[0])
    else:
        measure(args.backend, args.sizes, args.e2e_max, args.modes)
        if args.hot:
            measure_hot(args.backend, args.hot)


def set_up() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def measure(backend: str, sizes: list[int], e2e_max: int, modes: list[str]) -> None:
    set_up()
    for n in sizes:
        for mode in modes:
            if mode in REFERENCES and n > e2e_max:
                continue
            result = run_one(mode, n, e2e=mode not in UNBATCHED or n <= e2e_max)
            print(json.dumps({"backend": backend, **result}), flush=True)


# --- a mode at one size ------------------------------------------------------


def run_one(mode: str, n: int, *, e2e: bool) -> dict[str, Any]:
    from django.apps import apps

    model = apps.get_model("bench", MODES[mode][0])
    saves = MODES[mode][2]
    held, peak = memory(model, n, saves)
    # The best of several where runs are short: one run is at the mercy of
    # the machine's other work, and of when SQLite checkpoints its WAL.
    short = n <= 2000
    request = min(save(model, n, saves) for _ in range(5 if short else 1))
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
    e2e_s, after_s, result["missed"] = end_to_end(model, n, saves, 3 if short else 1)
    result["end_to_end_s"], result["after_commit_s"] = e2e_s, after_s
    return result


def end_to_end(model: Any, n: int, saves: int, trials: int) -> tuple[float, float, int]:
    """The fastest of ``trials`` runs through a running worker: the seconds
    from the first save until every handler has run, the part of them after
    the commit, and how many rows were never processed."""
    processed = model.objects.filter(processed=True)
    clear(model)  # Nothing of the runs before may reach the worker.
    runs = []
    with running_worker():
        for _ in range(trials):
            started = time.perf_counter()
            committed = started + save(model, n, saves)
            finished, missed = wait_for_handlers(processed, n)
            runs.append((finished - started, finished - committed, missed))
    # The fastest run: the others were slowed down by something else.
    return min(runs)


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


# --- --hot: one row, a commit after another ----------------------------------


def measure_hot(backend: str, commits: int) -> None:
    for mode in HOT:
        result = run_hot(mode, commits)
        print(json.dumps({"backend": backend, **result}), flush=True)


def run_hot(mode: str, commits: int) -> dict[str, Any]:
    """``commits`` updates of one row, each in its own transaction, one after
    the other, with a two-worker qcluster running: from the first until the
    outbox is empty (every call left has run), the part of it after the last
    commit, how many times the handler ran, and whether a run read the last
    state."""
    from django.apps import apps
    from django.db import transaction

    from django_q_signals.models import OutboxCall

    model = apps.get_model("bench", HOT[mode][0])
    clear(model)
    item = model.objects.bulk_create([model(n=-1)])[0]  # no signal
    with running_worker():
        started = time.perf_counter()
        for i in range(commits):
            with transaction.atomic():
                item.n = i
                item.save(update_fields=["n"])
        committed = time.perf_counter()
        finished = wait_for_outbox(OutboxCall.objects.all())
    item.refresh_from_db()
    return {
        "mode": mode,
        "commits": commits,
        "per_commit_us": (committed - started) / commits * 1e6,
        "end_to_end_s": finished - started,
        "after_commit_s": finished - committed,
        "runs": item.runs,
        "missed": int(item.seen != commits - 1),
    }


def wait_for_outbox(calls: Any) -> float:
    """When the outbox was found empty, or had not changed for 30 s (a call
    that failed stays: the run reports the last state as missed)."""
    left, changed = None, time.perf_counter()
    while True:
        time.sleep(0.02)
        count = calls.count()
        if count == 0:
            return time.perf_counter()
        if count != left:
            left, changed = count, time.perf_counter()
        elif time.perf_counter() - changed > 30:
            return changed


# --- the table and the queue, emptied and read --------------------------------


def clear(model: Any) -> None:
    from django_q_signals.models import OutboxCall

    model._base_manager.all().delete()
    OutboxCall.objects.all().delete()
    purge_queue()


def purge_queue() -> None:
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        OrmQ.objects.using(Conf.ORM).all().delete()
    else:
        get_broker().connection.flushdb()


def queued() -> tuple[int, int]:
    """The tasks in the queue, and their bytes."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        payloads = list(OrmQ.objects.using(Conf.ORM).values_list("payload", flat=True))
    else:
        broker = get_broker()
        payloads = broker.connection.lrange(broker.list_key, 0, -1)
    return len(payloads), sum(len(p) for p in payloads)


# --- --previous: a receiver with previous= and the same without it ------------


def measure_previous(backend: str, n: int) -> None:
    set_up()
    from bench.models import DefaultItem, PreviousItem

    for case in PREVIOUS_CASES:
        row: dict[str, Any] = {"backend": backend, "case": case, "n": n}
        for key, model in (("without", DefaultItem), ("with", PreviousItem)):
            timed = min(seconds(previous_case(model, n, case)) for _ in range(3))
            row[f"{key}_us"] = timed / n * 1e6
            row[f"{key}_queries"] = queries(previous_case(model, n, case)) / n
        print(json.dumps(row), flush=True)


def previous_case(model: Any, n: int, case: str) -> Callable[[], None]:
    """``case`` for ``n`` rows, its table set up for it, ready to be timed or
    counted."""
    from django.db import transaction

    clear(model)
    if case != "create":
        model.objects.bulk_create(model(n=i) for i in range(n))  # no signals
    items = list(model.objects.all()) if case == "loaded" else []
    pks = list(model.objects.values_list("pk", flat=True))

    def run() -> None:
        if case == "load":
            list(model.objects.all())
        else:
            with transaction.atomic():
                if case == "create":
                    for i in range(n):
                        model.objects.create(n=i)
                for item in items:
                    item.n += 1
                    item.save()
                if case == "by_hand":
                    for pk in pks:
                        model(pk=pk, n=-1).save()

    return run


def seconds(run: Callable[[], None]) -> float:
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def queries(run: Callable[[], None]) -> int:
    """The queries ``run`` makes."""
    from django.db import connection

    count = 0

    def counted(execute: Any, *args: Any) -> Any:
        nonlocal count
        count += 1
        return execute(*args)

    gc.collect()
    with connection.execute_wrapper(counted):
        run()
    return count


if __name__ == "__main__":
    main()
