"""supersede=True across commits: a new call takes the place of the row's call
on its way to a worker, and what happens when a worker, or another commit,
gets there between the steps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.test import override_settings
from django.utils import timezone

from django_q_signals import _relay
from django_q_signals.models import OutboxCall
from django_q_signals.testing import capture_calls
from tests.conftest import Connect
from tests.models import Article
from tests.test_ordered import run, run_all, save_titles, take_tasks

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

State = OutboxCall.State

#: A signal with a version number: what a call carries besides its row.
versioned = Signal()


@pytest.fixture
def read(connect: Connect[Any]) -> list[tuple[str, Any]]:
    """The title each run read, and the update_fields its call carried."""
    seen: list[tuple[str, Any]] = []

    @connect(post_save, sender=Article, outbox=True, supersede=True)
    def reindex(instance: Article, update_fields: Any, **kwargs: Any) -> None:
        seen.append((instance.title, update_fields and sorted(update_fields)))

    return seen


@pytest.fixture
def seen(connect: Connect[Any]) -> list[str]:
    """The titles an ordered and superseding receiver's handler read."""
    titles: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True, supersede=True)
    def index(instance: Article, **kwargs: Any) -> None:
        titles.append(instance.title)

    return titles


def commit_beside_a_waiting_call(article: Article, title: str) -> int:
    """Save ``article`` with ``title`` in a transaction that, before it
    commits, finds a newer call of another transaction committed first and
    waiting for the call on the broker: that call's pk."""
    with transaction.atomic():
        save_titles(article, title)
        waiting = OutboxCall.objects.get(state=State.QUEUED)
        waiting.pk = None
        waiting.state = State.WAITING
        waiting.save()
    assert waiting.pk is not None
    return waiting.pk


def test_a_new_call_takes_the_place_of_the_one_on_the_broker(
    read: list[tuple[str, Any]],
) -> None:
    article = Article.objects.create(title="v1")
    [task] = take_tasks()
    article.title = "v2"
    article.save(update_fields=["title"])
    article.title = "v3"
    article.save()
    # No task for either: the one on the broker runs the newest call.
    assert not take_tasks()
    [row] = OutboxCall.objects.all()
    assert row.state == State.SENT
    assert row.payload_of is not None
    assert row.payload_of > row.pk
    run(task)
    assert read == [("v3", None)]
    assert not OutboxCall.objects.exists()


def test_a_batch_runs_the_calls_that_took_its_rows_places(
    connect: Connect[Any],
) -> None:
    seen: list[tuple[str, Any]] = []

    @connect(post_save, sender=Article, outbox=True, supersede=True, batch=True)
    def reindex(instance: Article, update_fields: Any, **kwargs: Any) -> None:
        seen.append((instance.title, update_fields and sorted(update_fields)))

    first, second = Article.objects.bulk_create(
        [Article(title="a1"), Article(title="b1")]
    )
    with transaction.atomic():
        save_titles(first, "a2")
        save_titles(second, "b2")
    [task] = take_tasks()
    first.title = "a3"
    first.save(update_fields=["title"])
    assert not take_tasks()
    run(task)
    assert sorted(seen) == [("a3", ["title"]), ("b2", None)]


def test_a_call_waiting_for_a_running_one_is_replaced_in_place(
    connect: Connect[Any],
) -> None:
    seen: list[str] = []

    @connect(versioned, outbox=True, ordered=True, supersede=True)
    def index(instance: Article, n: int, **kwargs: Any) -> None:
        seen.append(f"{instance.title} n={n}")

    article = Article.objects.create(title="v1")
    versioned.send(sender=Article, instance=article, n=1)
    [first] = take_tasks()
    OutboxCall.objects.update(state=State.RUNNING)  # a worker runs n=1
    versioned.send(sender=Article, instance=article, n=2)
    [second] = take_tasks()
    run(second)
    assert OutboxCall.objects.latest("pk").state == State.WAITING
    save_titles(article, "v2")
    versioned.send(sender=Article, instance=article, n=3)
    assert not take_tasks()  # n=3 took n=2's place
    OutboxCall.objects.filter(state=State.RUNNING).update(state=State.SENT)
    run(first)
    run_all()  # the waiting call, sent when n=1 was done
    assert seen == ["v2 n=1", "v2 n=3"]


@contextmanager
def before(statement: str, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` just before the first query of this connection that
    contains ``statement``: what another process could do meanwhile."""
    done = False

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal done
        if not done and statement in sql:
            done = True
            action()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield
    assert done, f"no query with {statement!r} ran"


def quoted(sql: str) -> str:
    """``sql`` with the database's quotes."""
    return sql.replace('"', "`") if connection.vendor == "mysql" else sql


#: The look-up of the calls of the rows, the locking of the rows settling
#: writes (not on SQLite), and the UPDATE that gives an older call's row a
#: new call's payload.
LOOK_UP = '"payload_of" FROM'
LOCK = "FOR UPDATE"
TAKE_PLACE = '"payload" = (SELECT'


def test_a_call_whose_older_call_starts_meanwhile_is_sent(
    read: list[tuple[str, Any]],
) -> None:
    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    [older] = OutboxCall.objects.all()
    if not connection.features.update_can_self_select:
        pytest.skip("MySQL's calls take no other call's place")

    def worker_claims_it() -> None:
        OutboxCall.objects.filter(pk=older.pk).update(state=State.RUNNING)

    with before(quoted(TAKE_PLACE), worker_claims_it):
        save_titles(article, "v2")
    [second] = take_tasks()
    assert OutboxCall.objects.get(pk=older.pk).payload_of is None
    OutboxCall.objects.filter(pk=older.pk).update(state=State.SENT)
    run(first)
    run(second)
    assert [title for title, _ in read] == ["v2", "v2"]


@pytest.mark.parametrize("titles", [["v2"], ["v2", "v3"]], ids=["one", "two"])
@pytest.mark.parametrize("step", [LOOK_UP, TAKE_PLACE], ids=["look-up", "take-place"])
def test_calls_a_newer_one_took_the_place_of_first_are_neither_sent_nor_left(
    read: list[tuple[str, Any]], step: str, titles: list[str]
) -> None:
    """Before this commit's calls for the row are looked up, or take the
    place of its call on the broker, another transaction's newer call takes
    that place: this commit's calls (one or two) are not sent, nor left to
    the relay."""
    if step == TAKE_PLACE and not connection.features.update_can_self_select:
        pytest.skip("MySQL's calls take no other call's place")
    article = Article.objects.create(title="v1")
    take_tasks()
    [older] = OutboxCall.objects.all()
    newer_call = 10**12

    def a_newer_call_takes_its_place() -> None:
        OutboxCall.objects.filter(pk=older.pk).update(payload_of=newer_call)

    in_one_transaction = transaction.atomic()
    with before(quoted(step), a_newer_call_takes_its_place), in_one_transaction:
        save_titles(article, *titles)
    assert not take_tasks()
    assert list(OutboxCall.objects.values_list("pk", "payload_of")) == [
        (older.pk, newer_call)
    ]


def test_a_row_runs_the_call_that_took_its_place_where_supersede_is_off_since(
    connect: Connect[Any],
) -> None:
    """The worker reads the call from the row whatever its own settings say:
    a worker started with other settings, or after supersede was turned off,
    still runs the newest call."""
    if not connection.features.update_can_self_select:
        pytest.skip("MySQL's calls take no other call's place")
    seen: list[Any] = []

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, update_fields: Any, **kwargs: Any) -> None:
        seen.append(update_fields and sorted(update_fields))

    with override_settings(Q_SIGNALS={"SUPERSEDE": True}):
        article = Article.objects.create(title="v1")
        [task] = take_tasks()
        article.title = "v2"
        article.save(update_fields=["title"])
        assert not take_tasks()
    run(task)
    assert seen == [["title"]]
    assert not OutboxCall.objects.exists()


@pytest.mark.services
def test_the_relay_cannot_send_a_call_while_it_takes_a_place(
    read: list[tuple[str, Any]],
) -> None:
    """The relay, which passes over locked rows, locks a new call's row and
    sends it just as the call would take the place of the row's call on the
    broker: that place is not taken, and the new call runs once."""
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite has one writer: the relay cannot come in between")
    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    locked, failures = threading.Event(), []

    def relay() -> None:
        try:
            with transaction.atomic():
                row = (
                    OutboxCall.objects.select_for_update(skip_locked=True)
                    .filter(state=State.QUEUED)
                    .get()
                )
                locked.set()
                time.sleep(0.3)  # the settling waits on the row meanwhile
                OutboxCall.objects.filter(pk=row.pk).update(
                    state=State.SENT, sent=timezone.now()
                )
        except BaseException as exc:
            failures.append(exc)
            locked.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=relay)

    def the_relay_takes_the_new_call() -> None:
        thread.start()
        assert locked.wait(10)

    with before(quoted(LOCK), the_relay_takes_the_new_call):
        save_titles(article, "v2")
    thread.join()
    assert not failures
    # The call on the broker took nothing, and went: the new call, which the
    # relay has, replaces it.
    assert list(OutboxCall.objects.values_list("state", "payload_of")) == [
        (State.SENT, None)
    ]
    # Sent by this commit too: the claim lets one of the two tasks run it.
    for task in [first, *take_tasks()]:
        run(task)
    assert read == [("v2", None)]
    assert not OutboxCall.objects.exists()


def test_a_call_whose_row_a_newer_call_deleted_is_not_sent(
    read: list[tuple[str, Any]],
) -> None:
    article = Article.objects.create(title="v1")
    take_tasks()

    def a_newer_call_deletes_it() -> None:
        OutboxCall.objects.filter(state=State.QUEUED).delete()

    with before(quoted(LOOK_UP), a_newer_call_deletes_it):
        save_titles(article, "v2")
    assert not take_tasks()
    assert OutboxCall.objects.get().state == State.SENT


def test_a_database_error_in_the_look_up_sends_the_call(
    read: list[tuple[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    article = Article.objects.create(title="v1")
    [first] = take_tasks()

    def fail(execute: Any, sql: str, *args: Any) -> Any:
        if quoted(LOOK_UP) in sql:
            raise DatabaseError("the database went away")
        return execute(sql, *args)

    with caplog.at_level(logging.ERROR), connection.execute_wrapper(fail):
        save_titles(article, "v2")
    assert "their older calls may run too" in caplog.text
    [second] = take_tasks()
    run(first)
    run(second)
    assert [title for title, _ in read] == ["v2", "v2"]


def test_a_row_holding_another_receivers_call_is_refused(
    read: list[tuple[str, Any]],
    connect: Connect[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def other(instance: Article, **kwargs: Any) -> None:
        pass

    Article.objects.create(title="v1")
    tasks = take_tasks()
    mine = OutboxCall.objects.get(receiver__endswith="reindex")
    theirs = OutboxCall.objects.exclude(pk=mine.pk).get()
    # As if a later call had taken the row's place: one of another receiver.
    OutboxCall.objects.filter(pk=mine.pk).update(
        payload=theirs.payload, payload_of=theirs.pk
    )
    [task] = [task for task in tasks if "reindex" in str(task["args"])]
    with pytest.raises(ValueError, match=r"its outbox row holds a call of .*other"):
        run(task)
    assert read == []
    assert OutboxCall.objects.get(pk=mine.pk).state == State.FAILED


@pytest.mark.services
def test_commits_racing_a_worker_run_the_latest_call_last(
    connect: Connect[Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Threads commit new versions of one row while a worker runs the tasks:
    the calls never run older after newer, and the last run has the last.
    No settling fails (on MariaDB, two settling the same row once deadlocked)."""
    runs: list[int] = []

    @connect(versioned, outbox=True, supersede=True)
    def index(instance: Article, n: int, **kwargs: Any) -> None:
        assert int(instance.title) >= n  # the row as it is, at least as new
        runs.append(n)
        time.sleep(0.005)

    article = Article.objects.create(title="0")
    threads, per_thread = 4, 25
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            for _ in range(per_thread):
                with transaction.atomic():
                    row = Article.objects.select_for_update().get(pk=article.pk)
                    row.title = str(int(row.title) + 1)
                    Article.objects.filter(pk=row.pk).update(title=row.title)
                    versioned.send(sender=Article, instance=row, n=int(row.title))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    committers = [threading.Thread(target=commit) for _ in range(threads)]
    for thread in committers:
        thread.start()
    while any(thread.is_alive() for thread in committers):
        for task in take_tasks():
            run(task)
    for thread in committers:
        thread.join()
    run_all()
    commits = threads * per_thread
    with capsys.disabled():
        print(f"\nsupersede race: {commits} commits, {len(runs)} runs")
    assert not errors
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert runs == sorted(runs)
    assert runs[-1] == commits
    assert not OutboxCall.objects.exists()


def test_a_call_claimed_before_or_sent_long_ago_keeps_its_place(
    read: list[tuple[str, Any]],
) -> None:
    """A row a claim that expired may still end (the relay sent it again),
    or whose task may be lost, takes no new call: the new one is sent."""
    article = Article.objects.create(title="v1")
    take_tasks()
    long_ago = timezone.now() - timedelta(hours=1)
    for stale in ({"claim": "an expired claim"}, {"sent": long_ago}):
        OutboxCall.objects.update(**stale)
        save_titles(article, "v2")
        [task] = take_tasks()
        [row] = OutboxCall.objects.all()
        assert row.payload_of is None
        run(task)
        assert read.pop() == ("v2", None)


def test_a_waiting_call_whose_blocker_goes_is_sent_at_once(seen: list[str]) -> None:
    article = Article.objects.create(title="v1")
    take_tasks()
    later = timezone.now() + timedelta(hours=1)
    OutboxCall.objects.update(state=State.RUNNING, due=later)
    save_titles(article, "v2")
    run_all()  # held back by the running call: waiting
    # It failed, a retry to come: not started, so the next call replaces it.
    OutboxCall.objects.filter(state=State.RUNNING).update(state=State.FAILED)
    assert sorted(OutboxCall.objects.values_list("state", flat=True)) == [
        State.FAILED,
        State.WAITING,
    ]
    save_titles(article, "v3")  # takes the waiting call's place
    [task] = take_tasks()  # and, the failed call gone, it is sent
    run(task)
    assert seen == ["v3"]
    assert not OutboxCall.objects.exists()


def test_a_waiting_call_is_sent_at_once_when_the_calls_it_waits_for_go(
    seen: list[str],
) -> None:
    """ordered: a commit whose call a waiting call of another transaction
    replaces deletes the row's older call that one waits for: it is sent."""
    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    waiting = commit_beside_a_waiting_call(article, "v2")
    [task] = take_tasks()
    assert list(OutboxCall.objects.values_list("pk", "state")) == [
        (waiting, State.SENT)
    ]
    run(first)  # its row is gone: nothing runs
    run(task)
    assert seen == ["v2"]
    assert not OutboxCall.objects.exists()


def test_a_call_the_relay_sent_meanwhile_replaces_the_older_calls(
    read: list[tuple[str, Any]],
) -> None:
    """The relay sends a commit's last call for the row before the commit
    settles it (a transaction held open past OUTBOX_RELAY_AFTER): it is not
    sent again, and the row's older calls go, the commit's first among them."""
    article = Article.objects.create(title="v1")
    take_tasks()

    def the_relay_sends_the_last() -> None:
        last = OutboxCall.objects.latest("pk")
        OutboxCall.objects.filter(pk=last.pk).update(
            state=State.SENT, sent=timezone.now()
        )

    in_one_transaction = transaction.atomic()
    with before(quoted(LOOK_UP), the_relay_sends_the_last), in_one_transaction:
        save_titles(article, "v2", "v3")
    assert not take_tasks()
    [last] = OutboxCall.objects.all()
    assert last.state == State.SENT
    _relay.send_again(OutboxCall.objects.all())  # the relay's task
    run_all()
    assert read == [("v3", None)]


def test_a_waiting_call_left_unsent_by_a_failing_database_waits_for_the_relay(
    seen: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    article = Article.objects.create(title="v1")
    take_tasks()

    def fail(rows: Any) -> int:
        raise DatabaseError("the database went away")

    with monkeypatch.context() as patched, caplog.at_level(logging.ERROR):
        patched.setattr(_relay, "send_again", fail)
        # The waiting call is left with nothing before it.
        commit_beside_a_waiting_call(article, "v2")
    assert "the relay sends them" in caplog.text
    assert not take_tasks()
    assert list(OutboxCall.objects.values_list("state", flat=True)) == [State.WAITING]
    assert _relay.run() == 1
    run_all()
    assert seen == ["v2"]


def test_captured_calls_all_run(read: list[tuple[str, Any]]) -> None:
    article = Article.objects.create(title="v1")
    take_tasks()
    with capture_calls() as captured:
        save_titles(article, "v2", "v3")
    assert len(captured) == 2
    captured.run()
    assert read == [("v3", None), ("v3", None)]
