"""django-q-signals, end to end: signals sent here, handlers run in a real worker.

Run from the repository root (``nox -s demo`` does this)::

    python example/demo.py

It migrates a fresh SQLite database in a temporary directory, starts
``python example/manage.py qcluster`` (Django Q2 with its ORM broker, so
nothing but SQLite is needed), then plays the part of a web request: it saves,
updates, tags and deletes articles and rolls one save back. The handlers in
``example/shop/handlers.py`` run in the worker and print what they received.
Then it saves a report, whose outbox handler says how far it is, and asks for
the report's page as a staff user while the handler runs: the page's status
fragment shows the progress and stops polling once the handler is done.
The script waits for every expected handler call, checks the rolled-back save
never reached a handler, stops the worker and exits 0, or 1 if anything
expected did not happen.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLE_DIR = Path(__file__).resolve().parent
WAIT_SECONDS = 30  # for all handler calls to run
STOP_SECONDS = 10  # for the worker to stop after SIGTERM, before SIGKILL

HEADER = """\
django-q-signals demo
=====================
The example project in example/ (SQLite, Django Q2's ORM broker) has four
handlers in example/shop/handlers.py, connected with @async_receiver where
@receiver would go. When a signal fires, the web process only queues a task,
after the transaction commits; a Django Q2 worker reloads the instances from
the database and calls the handler, so it sees each row as it is then (or
instance=None and _instance_pk if the row is gone).

This script starts a real worker (manage.py qcluster, 2 worker processes), then
acts like a web request: it creates, updates and tags an article, creates and
deletes a second one in one transaction, and rolls a third save back. Last,
it saves a report and opens the report's page while an outbox handler renders
it: the page's status fragment ({% qsignals_status report %}) shows how far the
handler is, polling with htmx, and stops when it is done.

  [web]            what this process did, and how long the call took
  [worker pid N]   printed by a handler, in one of the worker's processes
"""


def say(prefix: str, message: str) -> None:
    print(f"[{prefix}] {message}", flush=True)


def main() -> int:
    print(HEADER, flush=True)
    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="django-q-signals-demo-"))
    try:
        ok = run(state_dir, started)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"\n{'OK' if ok else 'FAILED'} ({time.monotonic() - started:.1f} s in all)")
    return 0 if ok else 1


def run(state_dir: Path, started: float) -> bool:
    # A fresh database file each run: nothing left over from an earlier one.
    os.environ["DEMO_DATABASE"] = str(state_dir / "db.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "demo_project.settings"
    sys.path.insert(0, str(EXAMPLE_DIR))

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    say("demo", f"migrated a fresh SQLite database in {state_dir}")

    worker = start_worker()
    try:
        expected, rolled_back_pk = send_signals()
        report_pk, page_ok = watch_report_page()
        expected.append(("render_report", None, {"report_pk": report_pk}))
        checked = wait_and_check(worker, expected, rolled_back_pk, started)
        return page_ok and checked
    finally:
        stop_worker(worker)


def start_worker() -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        *(f"-W{option}" for option in sys.warnoptions),
        str(EXAMPLE_DIR / "manage.py"),
        "qcluster",
    ]
    # Its own session, so the cluster and its worker processes can be stopped
    # together; stdout and stderr are this terminal, so its prints show here.
    worker = subprocess.Popen(
        command,
        cwd=EXAMPLE_DIR,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    say(
        "demo",
        f"started the worker: python example/manage.py qcluster (pid {worker.pid})",
    )
    return worker


class Step:
    """Times one thing the 'request' does, and prints it."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Step:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        ms = (time.perf_counter() - self.start) * 1000
        say("web", f"{self.what} ({ms:.1f} ms)")


def send_signals() -> tuple[list[tuple[str, int, dict[str, Any]]], int]:
    """Do what a web request would; return the handler calls that must follow."""
    from django.db import transaction
    from shop.models import Article, Tag

    print(flush=True)
    with Step("Article.objects.create(title='Hello, signals')") as step:
        article = Article.objects.create(title="Hello, signals")
        step.what += f": pk={article.pk}, post_save created=True"

    with Step(
        "article.title = 'Hello, workers'; article.save(update_fields=['title']): "
        "post_save created=False"
    ):
        article.title = "Hello, workers"
        article.save(update_fields=["title"])

    django, queues = (
        Tag.objects.create(name="django"),
        Tag.objects.create(name="queues"),
    )
    tag_pks = sorted([django.pk, queues.pk])
    with Step(
        "article.tags.add(django, queues): m2m_changed pre_add and post_add, "
        f"pk_set={set(tag_pks)}"
    ):
        article.tags.add(django, queues)

    with (
        Step("in one transaction.atomic()") as step,
        transaction.atomic(),
    ):
        doomed = Article.objects.create(title="Gone before the worker looks")
        doomed_pk = doomed.pk
        doomed.delete()
        step.what += (
            f": created Article pk={doomed_pk} and deleted it: post_save, post_delete"
        )

    with Step("in a transaction.atomic() that then raised") as step:
        try:
            with transaction.atomic():
                draft = Article.objects.create(title="Never committed")
                rolled_back_pk = draft.pk
                raise RuntimeError("something went wrong later in the request")
        except RuntimeError:
            step.what += (
                f": created Article pk={rolled_back_pk}, rolled back: "
                "its post_save is dropped"
            )
    say("web", "response sent; every handler call above is now up to the worker\n")

    tagged = {"model": "shop.Tag", "pk_set": tag_pks}
    expected = [
        ("article_saved", article.pk, {"created": True, "update_fields": None}),
        ("article_saved", article.pk, {"created": False, "update_fields": ["title"]}),
        ("article_tags_changed", article.pk, {"action": "pre_add", **tagged}),
        ("article_tags_changed", article.pk, {"action": "post_add", **tagged}),
        # Gone from the database when the worker looks: instance=None, pk given.
        (
            "article_saved",
            doomed_pk,
            {"created": True, "title": None, "_instance_pk": doomed_pk},
        ),
        ("article_deleted", doomed_pk, {"title": None, "_instance_pk": doomed_pk}),
    ]
    return expected, rolled_back_pk


def watch_report_page() -> tuple[int, bool]:
    """Save a report and look at its page as a staff user would, until its
    status fragment says render_report is done: whether the page showed the
    handler's progress while it ran, then stopped polling."""
    from django.contrib.auth.models import User
    from django.test import Client
    from shop.models import Report

    with Step("Report.objects.create(title='Quarterly figures')") as step:
        report = Report.objects.create(title="Quarterly figures")
        step.what += f": pk={report.pk}, render_report kept in the outbox"
    browser = Client(HTTP_HOST="localhost")
    browser.force_login(User.objects.create_superuser("staff"))
    say("web", f"GET /reports/{report.pk}/ as a staff user, every half second:")
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        html = browser.get(f"/reports/{report.pk}/").content.decode()
        shown = " ".join(
            text
            for text in re.findall(
                r'class="qsignals-(?:handler|state|progress)">([^<]*)<', html
            )
            if text
        )
        polling = "hx-get=" in html
        state = f"{shown} (polling)" if polling else "no call pending (not polling)"
        if not seen or seen[-1] != state:
            say("web", f"  the status fragment: {state}")
            seen.append(state)
        if not polling:
            break
        time.sleep(0.5)
    progressed = any("% pages" in state for state in seen)
    ok = progressed and seen[-1].startswith("no call pending")
    if not ok:
        say("demo", "the page did not show render_report's progress, then done")
    return report.pk, ok


def wait_and_check(
    worker: subprocess.Popen[bytes],
    expected: list[tuple[str, int, dict[str, Any]]],
    rolled_back_pk: int,
    started: float,
) -> bool:
    from django_q.models import Failure, OrmQ, Success
    from shop.models import HandlerCall

    sent = time.monotonic()
    deadline = sent + WAIT_SECONDS
    # Done when every call has run and the broker is empty: a task leaves the
    # ORM broker only once its result is saved, so nothing is still running.
    while True:
        if HandlerCall.objects.count() >= len(expected) and not OrmQ.objects.exists():
            break
        if Failure.objects.exists() and not OrmQ.objects.exists():
            break
        if worker.poll() is not None:
            say("demo", f"the worker exited early, with code {worker.returncode}")
            break
        if time.monotonic() > deadline:
            say("demo", f"gave up waiting after {WAIT_SECONDS} s")
            break
        time.sleep(0.1)
    waited = time.monotonic() - sent

    calls = list(HandlerCall.objects.order_by("pk"))
    unmatched = list(calls)
    missing = []
    for handler, article_pk, received in expected:
        match = next(
            (
                call
                for call in unmatched
                if call.handler == handler
                and call.article_pk == article_pk
                and all(
                    call.received.get(key) == value for key, value in received.items()
                )
            ),
            None,
        )
        if match is None:
            missing.append((handler, article_pk, received))
        else:
            unmatched.remove(match)
    from django.core.management import call_command

    rolled_back_ran = any(call.article_pk == rolled_back_pk for call in calls)
    failures = list(Failure.objects.all())
    successes = Success.objects.count()
    pids = ", ".join(map(str, sorted({call.worker_pid for call in calls})))

    print("\nSummary")
    print(
        f"  handler calls expected: {len(expected)}, run by the worker: {len(calls)}"
        f" (in worker processes with pid {pids or '-'})"
    )
    for handler, article_pk, received in missing:
        print(f"  MISSING: {handler} for Article pk={article_pk} with {received}")
    for call in unmatched:
        print(f"  UNEXPECTED: {call}: {call.received}")
    print(
        f"  rolled-back save (Article pk={rolled_back_pk}): "
        + (
            "its handler RAN, it should not have"
            if rolled_back_ran
            else "its handler never ran"
        )
    )
    print(f"  Django Q2 tasks: {successes} succeeded, {len(failures)} failed")
    for failure in failures:
        print(f"  FAILED task {failure.name} ({failure.group}):\n{failure.result}")
    ok = (
        not missing
        and not unmatched
        and not rolled_back_ran
        and not failures
        and successes == len(expected)
    )
    print(
        f"  {'all handler calls done' if ok else 'waited'} {waited:.1f} s after the "
        f"response; {time.monotonic() - started:.1f} s since the demo started"
    )
    print("\n$ python manage.py qsignals --stats")
    call_command("qsignals", "--stats")
    return ok


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Stop the cluster with SIGTERM, then SIGKILL whatever is left of its group.

    SIGTERM goes to the cluster's main process only: it stops its sentinel and
    worker processes itself and exits within a second. Sent to the whole
    group, SIGTERM kills the sentinel outright (Django Q2 gives it the default
    handler) and the main process then hangs.
    """
    begun = time.monotonic()
    how = "SIGTERM"
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            how = f"SIGKILL, still running {STOP_SECONDS} s after SIGTERM"
    else:
        how = f"it had exited with code {worker.returncode}"
    with contextlib.suppress(ProcessLookupError):  # no group left: the usual case
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    say("demo", f"stopped the worker ({how}) in {time.monotonic() - begun:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
