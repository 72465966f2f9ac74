"""outbox=True: calls kept with the data until their handler has run."""

from __future__ import annotations

import logging
import pickle
import socket
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_save, pre_save
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf

from django_q_signals import (
    _brokers,
    _claim,
    _outbox,
    _payload,
    _relay,
    async_receiver,
    pending,
)
from django_q_signals.models import OutboxCall, RunRecord
from django_q_signals.worker import BatchError, run_batch, run_call
from tests.conftest import (
    Connect,
    TwoArguments,
    custom,
    path,
    purge,
    queued_tasks,
    rolled_back,
    run_queued,
)
from tests.models import (
    Article,
    Author,
    Ledger,
    Membership,
    Page,
    Price,
    ProxyArticle,
    Token,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

State = OutboxCall.State


def states() -> list[str]:
    return list(OutboxCall.objects.order_by("pk").values_list("state", flat=True))


@pytest.fixture
def titles(connect: Connect[Any]) -> list[str]:
    """The titles an outbox receiver of Article saves saw, one per run."""
    received: list[str] = []

    @connect(post_save, sender=Article, outbox=True)
    def handler(instance: Article | None, **kwargs: Any) -> None:
        received.append(instance.title if instance else "gone")

    return received


# Written with the data


@pytest.mark.usefixtures("titles")
def test_a_call_is_written_in_the_transaction_and_sent_after_it() -> None:
    with transaction.atomic():
        article = Article.objects.create(title="a")
        [row] = OutboxCall.objects.all()
        assert (row.state, row.model, row.object_pk) == (
            State.QUEUED,
            "tests.Article",
            str(article.pk),
        )
        assert queued_tasks() == []
    [task] = queued_tasks()
    assert task["args"][1] == ("default", row.pk)
    assert states() == [State.SENT]


@pytest.mark.usefixtures("titles")
def test_a_rollback_takes_the_rows_with_the_data() -> None:
    with transaction.atomic():
        Article.objects.create(title="kept")
        with rolled_back():
            Article.objects.create(title="dropped")
    with rolled_back():
        Article.objects.create(title="dropped too")
    assert list(OutboxCall.objects.values_list("object_pk", flat=True)) == [
        str(Article.objects.get().pk)
    ]


@pytest.mark.usefixtures("titles")
def test_in_autocommit_the_row_is_written_then_sent() -> None:
    Article.objects.create(title="a")
    assert states() == [State.SENT]
    assert len(queued_tasks()) == 1


def test_the_row_is_written_on_the_signals_database(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Ledger, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic(using="other"):
        ledger = Ledger.objects.create(entry="a")
    assert OutboxCall.objects.count() == 0
    [row] = OutboxCall.objects.using("other").all()
    assert (row.model, row.object_pk, row.state) == (
        "tests.Ledger",
        str(ledger.pk),
        State.SENT,
    )


@override_settings(Q_SIGNALS={"OUTBOX": True})
def test_the_outbox_setting_turns_it_on(numbers: list[int]) -> None:
    custom.send(sender=None, n=1)
    assert states() == [State.SENT]
    run_queued()
    assert numbers == [1]
    assert states() == []


# Run once


def test_the_handler_runs_and_its_row_goes(titles: list[str]) -> None:
    Article.objects.create(title="a")
    run_queued()
    assert titles == ["a"]
    assert OutboxCall.objects.count() == 0


def test_a_call_sent_twice_runs_once(
    titles: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_q_signals")
    Article.objects.create(title="a")
    [task] = queued_tasks()
    assert run_call(*task["args"]) is None
    assert run_call(*task["args"]) is None
    assert titles == ["a"]
    assert "1 call(s) not run: another run has them, or they already ran" in (
        caplog.text
    )


def test_a_call_claimed_by_a_live_run_runs_nothing(titles: list[str]) -> None:
    Article.objects.create(title="a")
    [task] = queued_tasks()
    later = timezone.now() + timedelta(minutes=1)
    OutboxCall.objects.update(state=State.RUNNING, due=later, claim="x" * 32)
    run_call(*task["args"])
    assert titles == []
    assert states() == [State.RUNNING]


def test_a_call_whose_claim_expired_runs_again(titles: list[str]) -> None:
    """The worker that claimed it died inside the handler."""
    Article.objects.create(title="a")
    [task] = queued_tasks()
    earlier = timezone.now() - timedelta(seconds=1)
    OutboxCall.objects.update(state=State.RUNNING, due=earlier, attempts=1)
    run_call(*task["args"])
    assert titles == ["a"]
    assert states() == []


@pytest.mark.parametrize(
    ("timeout", "lasts"),
    [
        ({"timeout": 40}, 40),
        # No timeout, for the task or the cluster: as long as Django Q2 waits
        # before it gives the task to another worker (Q_CLUSTER's retry).
        ({}, settings.Q_CLUSTER["retry"]),
    ],
)
def test_a_claim_lasts_the_tasks_timeout(
    connect: Connect[Any],
    monkeypatch: pytest.MonkeyPatch,
    timeout: dict[str, int],
    lasts: int,
) -> None:
    monkeypatch.setattr(Conf, "TIMEOUT", None)
    claims = []

    @connect(custom, outbox=True, q_options=timeout)
    def handler(**kwargs: Any) -> None:
        [row] = OutboxCall.objects.all()
        assert row.due is not None
        claims.append((row.state, row.attempts, (row.due - timezone.now()).seconds))

    custom.send(sender=None)
    run_queued()
    [(state, attempts, seconds)] = claims
    assert (state, attempts) == (State.RUNNING, 1)
    assert lasts <= seconds <= lasts + _claim.CLAIM_MARGIN


# Failures and retries
def test_a_claim_reads_how_long_each_first_attempt_waited_since_its_commit(
    titles: list[str],
) -> None:
    from django_q_signals._registry import get_receiver

    articles = Article.objects.bulk_create([Article(title="a"), Article(title="b")])
    for article in articles:
        article.save()
    first, second = OutboxCall.objects.order_by("pk")
    now = timezone.now()
    # One put on the broker 30 s ago; one a worker took before it was marked
    # sent, written 10 s ago, on its second attempt.
    OutboxCall.objects.filter(pk=first.pk).update(sent=now - timedelta(seconds=30))
    OutboxCall.objects.filter(pk=second.pk).update(
        created=now - timedelta(seconds=10), sent=None, attempts=1
    )
    receiver = get_receiver(first.receiver)
    assert receiver is not None
    claim = _claim.Claim(receiver, [("default", first.pk), ("default", second.pk)])
    [waited] = claim.waits()["default"]
    assert 30 <= waited < 40
    assert claim.holds(("default", second.pk))
    claim.succeeded([("default", first.pk)])
    claim.failed(("default", second.pk), ValueError("no"))
    assert OutboxCall.objects.count() == 2  # the done call goes at the end
    claim.finish()
    assert list(OutboxCall.objects.values_list("pk", "state")) == [
        (second.pk, State.FAILED)
    ]
    [record] = RunRecord.objects.all()
    assert (record.receiver, record.runs, record.failures) == (first.receiver, 2, 1)
    assert sum(record.waits.values()) == 1


def test_a_failed_call_keeps_its_error(connect: Connect[Any]) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        raise RuntimeError("no luck")

    custom.send(sender=None)
    [task] = queued_tasks()
    with pytest.raises(RuntimeError, match="no luck"):
        run_call(*task["args"])
    [row] = OutboxCall.objects.all()
    assert (row.state, row.attempts, row.due) == (State.FAILED, 1, None)
    assert row.error.endswith("RuntimeError: no luck")
    assert "Traceback (most recent call last)" in row.error


def test_a_call_failed_before_it_was_marked_sent_stays_failed(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        raise RuntimeError("failed at once")

    write = _brokers.write

    def write_then_run(destination: Any, packs: list[str], tasks: Any) -> None:
        write(destination, packs, tasks)
        # A worker takes the task and fails it before this process goes on.
        with pytest.raises(RuntimeError):
            run_queued()

    monkeypatch.setattr(_brokers, "write", write_then_run)
    custom.send(sender=None)
    [row] = OutboxCall.objects.all()
    assert (row.state, row.attempts, row.due) == (State.FAILED, 1, None)
    assert row.error.endswith("RuntimeError: failed at once")
    assert _relay.run(now=timezone.now() + timedelta(hours=1)) == 0


def test_retries_run_a_failed_call_again_when_due(connect: Connect[Any]) -> None:
    runs: list[str] = []

    @connect(custom, outbox=True, retries=3, retry_backoff=10)
    def handler(**kwargs: Any) -> None:
        runs.append("run")
        if len(runs) <= 2:
            raise RuntimeError(f"failure {len(runs)}")

    custom.send(sender=None)
    now = timezone.now()
    with pytest.raises(RuntimeError):
        run_queued()
    [row] = OutboxCall.objects.all()
    assert (row.state, row.attempts) == (State.FAILED, 1)
    assert row.due is not None
    assert 10 <= (row.due - now).total_seconds() < 12

    assert _relay.run(now=now + timedelta(seconds=5)) == 0  # not due yet
    assert _relay.run(now=now + timedelta(seconds=12)) == 1
    before = timezone.now()
    with pytest.raises(RuntimeError, match="failure 2"):
        run_queued()
    row.refresh_from_db()
    assert (row.state, row.attempts) == (State.FAILED, 2)
    # The wait doubles.
    assert row.due is not None
    assert 20 <= (row.due - before).total_seconds() < 21

    _relay.run(now=row.due)
    run_queued()
    assert runs == ["run", "run", "run"]
    assert OutboxCall.objects.count() == 0


def test_out_of_retries_a_call_stays_failed(connect: Connect[Any]) -> None:
    @connect(custom, outbox=True, retries=1)
    def handler(**kwargs: Any) -> None:
        raise RuntimeError("always")

    custom.send(sender=None)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            run_queued()
        _relay.run(now=timezone.now() + timedelta(seconds=1))
    [row] = OutboxCall.objects.all()
    assert (row.state, row.attempts, row.due) == (State.FAILED, 2, None)
    assert queued_tasks() == []


def test_a_batch_claims_its_calls_at_once_and_keeps_each_outcome(
    connect: Connect[Any],
) -> None:
    received: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        if n == 2:
            raise ValueError("two")
        received.append(n)

    with transaction.atomic():
        for n in range(4):
            custom.send(sender=None, n=n)
    [task] = queued_tasks()
    with CaptureQueriesContext(connection) as queries, pytest.raises(BatchError):
        run_batch(*task["args"])
    assert received == [0, 1, 3]
    # One claim (and a read of what it claimed, where an UPDATE cannot return
    # it), the failed call's row written, and one delete for the rest.
    statements = [q["sql"].split()[0] for q in queries if "outboxcall" in q["sql"]]
    read = [] if _claim._returns_rows(connection) else ["SELECT"]
    assert statements == ["UPDATE", *read, "UPDATE", "DELETE"]
    [row] = OutboxCall.objects.all()
    assert row.state == State.FAILED

    # Sent again: only the failed call runs.
    purge()
    _relay.send_again(OutboxCall.objects.all())
    received.clear()
    with pytest.raises(BatchError, match="1 of 1 calls"):
        run_queued()
    assert received == []


def test_a_batch_runs_only_the_calls_it_claimed(connect: Connect[Any]) -> None:
    received: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        for n in range(3):
            custom.send(sender=None, n=n)
    [task] = queued_tasks()
    first, second, _ = OutboxCall.objects.order_by("pk")
    first.delete()  # already ran
    later = timezone.now() + timedelta(minutes=1)
    OutboxCall.objects.filter(pk=second.pk).update(state=State.RUNNING, due=later)
    assert run_batch(*task["args"]) == 3
    assert received == [2]
    assert states() == [State.RUNNING]


def test_a_batch_larger_than_one_statement_is_sent_claimed_and_deleted_in_parts(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox, "PKS_AT_MOST", 2)
    received: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        for n in range(5):
            custom.send(sender=None, n=n)
    assert states() == [State.SENT] * 5
    [task] = queued_tasks()
    later = timezone.now() + timedelta(minutes=1)
    taken = OutboxCall.objects.order_by("pk")[3]
    OutboxCall.objects.filter(pk=taken.pk).update(state=State.RUNNING, due=later)
    assert run_batch(*task["args"]) == 5
    assert received == [0, 1, 2, 4]
    assert list(OutboxCall.objects.values_list("pk", flat=True)) == [taken.pk]


def test_a_batch_with_calls_kept_in_no_row_runs_them_all(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table was migrated while the process ran: the calls written
    before have no row."""
    received: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)
        if n == 0:
            raise ValueError("zero")

    with transaction.atomic():
        monkeypatch.setattr(OutboxCall._meta, "db_table", "not_migrated_yet")
        monkeypatch.setattr(_outbox, "_tables", set())
        monkeypatch.setattr(_outbox, "_missing_told", set())
        custom.send(sender=None, n=0)
        custom.send(sender=None, n=1)
        monkeypatch.undo()
        custom.send(sender=None, n=2)
    [task] = queued_tasks()
    with pytest.raises(BatchError, match="1 of 3 calls"):
        run_batch(*task["args"])
    assert received == [0, 1, 2]
    # The last call's row went; the first had none to keep its error in.
    assert OutboxCall.objects.count() == 0


def test_an_outbox_call_that_cannot_be_unpickled_keeps_the_error(
    connect: Connect[Any],
) -> None:
    received: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        custom.send(sender=None, n=1, error=TwoArguments(1, "broken"))
        custom.send(sender=None, n=2, error=None)
    [task] = queued_tasks()
    with pytest.raises(BatchError, match="1 of 2 calls"):
        run_batch(*task["args"])
    assert received == [2]
    [row] = OutboxCall.objects.all()
    assert row.state == State.FAILED
    assert "Could not unpickle its arguments: TypeError" in row.error


def test_a_failure_after_another_run_claimed_the_call_leaves_its_row(
    connect: Connect[Any],
) -> None:
    """The claim ran out while the handler ran, and another worker took the call."""

    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        OutboxCall.objects.update(claim="another run")
        raise RuntimeError("late")

    custom.send(sender=None)
    with pytest.raises(RuntimeError, match="late"):
        run_queued()
    [row] = OutboxCall.objects.all()
    # As the other run left it: its own run records how it went.
    assert (row.state, row.claim, row.error) == (State.RUNNING, "another run", "")


# The relay


@override_settings(Q_SIGNALS={"OUTBOX_RELAY_AFTER": 30})
def test_the_relay_sends_calls_written_but_never_sent(titles: list[str]) -> None:
    """The process died between the commit and the broker."""
    with transaction.atomic():
        Article.objects.create(title="a")
        transaction.on_commit(lambda: OutboxCall.objects.update(state=State.QUEUED))
    purge()
    now = timezone.now()
    assert _relay.run(now=now + timedelta(seconds=10)) == 0
    assert _relay.run(now=now + timedelta(seconds=31)) == 1
    run_queued()
    assert titles == ["a"]


@pytest.mark.usefixtures("titles")
def test_the_relay_sends_again_sent_calls_the_broker_lost() -> None:
    Article.objects.create(title="a")
    later = timezone.now() + timedelta(seconds=31)
    # The task is still on the broker: it is on its way.
    assert _relay.run(now=later) == 0
    purge()  # a worker took it and died
    assert _relay.run(now=later) == 1
    assert len(queued_tasks()) == 1


@pytest.mark.usefixtures("titles")
def test_the_relay_run_by_a_worker_does_not_count_its_own_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_q.models import OrmQ
    from django_q.signals import pre_execute
    from django_q.signing import SignedPackage

    from django_q_signals.worker import relay

    if not Conf.ORM:
        pytest.skip("the ORM broker keeps a running task in its table; Redis does not")
    Article.objects.create(title="a")
    purge()  # a worker took the call's task and died
    OutboxCall.objects.update(sent=timezone.now() - timedelta(minutes=1))
    # The cluster runs the scheduled relay as a task of the ORM broker, which
    # keeps its row until the task ends.
    relay_task = {"id": "1", "name": "relay", "func": "django_q_signals.worker.relay"}
    own = OrmQ.objects.create(
        key=Conf.CLUSTER_NAME,
        payload=SignedPackage.dumps({**relay_task, "args": (), "kwargs": {}}),
        lock=timezone.now(),
    )
    monkeypatch.setattr(_relay, "_running_task", None)
    pre_execute.send(sender="django_q", func=relay, task={"ack_id": own.pk})
    assert relay() == 1
    funcs = [task["func"] for task in queued_tasks()]
    assert funcs == [
        "django_q_signals.worker.relay",
        "django_q_signals.worker.run_call",
    ]


def test_the_relay_sends_the_calls_of_databases_that_answer(
    titles: list[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import connections

    # A process whose relay has not looked at the databases yet.
    monkeypatch.setattr(_outbox, "_tables", set())
    with transaction.atomic():
        Article.objects.create(title="a")
    purge()
    OutboxCall.objects.update(
        state=State.QUEUED, created=timezone.now() - timedelta(minutes=1)
    )
    other = connections["other"]
    other.close()
    saved = dict(other.settings_dict)
    if other.vendor == "sqlite":
        other.settings_dict["NAME"] = "/nonexistent/directory/outbox.sqlite3"
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            other.settings_dict["PORT"] = sock.getsockname()[1]
    try:
        assert _relay.run() == 1
    finally:
        other.close()
        other.settings_dict.update(saved)
    run_queued()
    assert titles == ["a"]
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("Relay: the database 'other' could not be read")


def test_the_relay_goes_on_when_a_database_fails_in_the_middle(
    titles: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError, connections

    Article.objects.create(title="a")
    purge()
    OutboxCall.objects.update(
        state=State.QUEUED, created=timezone.now() - timedelta(minutes=1)
    )

    def lost_connection(execute: Any, sql: str, *args: Any) -> Any:
        if "outboxcall" in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, *args)

    with connections["other"].execute_wrapper(lost_connection):
        assert _relay.run() == 1
    run_queued()
    assert titles == ["a"]
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "'other' could not be read (OperationalError: server closed" in error


def test_the_relay_asks_each_broker_once_and_skips_unknown_receivers(
    titles: list[str], connect: Connect[Any]
) -> None:
    also: list[str] = []

    @connect(post_save, sender=Article, outbox=True)
    def audit(instance: Article, **kwargs: Any) -> None:
        also.append(instance.title)

    Article.objects.create(title="a")
    Article.objects.create(title="b")
    purge()  # a worker took the tasks and died
    renamed = OutboxCall.objects.order_by("pk").last()
    assert renamed is not None
    OutboxCall.objects.filter(pk=renamed.pk).update(receiver="tests.gone.audit")
    later = timezone.now() + timedelta(seconds=31)
    assert _relay.run(now=later) == 3
    run_queued()
    assert (sorted(titles), also) == (["a", "b"], ["a"])
    assert list(OutboxCall.objects.values_list("receiver", flat=True)) == [
        "tests.gone.audit"
    ]


def test_the_relay_sends_each_due_call_once(titles: list[str]) -> None:
    with transaction.atomic():
        for n in range(3):
            Article.objects.create(title=str(n))
    purge()
    OutboxCall.objects.update(state=State.QUEUED)
    later = timezone.now() + timedelta(seconds=31)
    assert _relay.run(now=later) == 3
    assert _relay.run(now=later) == 0
    run_queued()
    assert titles == ["0", "1", "2"]


def test_the_relay_reads_in_chunks(
    titles: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_relay, "CHUNK", 2)
    with transaction.atomic():
        for n in range(5):
            Article.objects.create(title=str(n))
    purge()
    assert _relay.run(everything=True) == 5
    run_queued()
    assert titles == ["0", "1", "2", "3", "4"]


@pytest.mark.usefixtures("titles")
def test_the_relay_skips_rows_that_hold_no_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Article.objects.create(title="a")
    row = OutboxCall.objects.create(
        receiver="gone", payload=_outbox.signed(b"not a call")
    )
    purge()
    assert _relay.run(everything=True) == 1
    assert (
        f"outbox row default:{row.pk} holds no call: not a call of this version"
        in caplog.text
    )


class Forged:
    """A pickle that would run code of its choosing when loaded."""

    loaded: ClassVar[list[str]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (Forged.loaded.append, ("ran the forger's code",))


@pytest.mark.usefixtures("titles")
def test_the_relay_refuses_a_row_it_did_not_sign(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = pickle.dumps((_payload.FORMAT, "tests.x", None, Forged()))
    OutboxCall.objects.create(receiver="tests.x", payload=bytes(32) + forged)
    OutboxCall.objects.create(receiver="tests.x", payload=forged)
    assert _relay.run(everything=True) == 0
    assert Forged.loaded == []
    refused = [r for r in caplog.records if "signature does not verify" in r.message]
    assert [r.levelname for r in refused] == ["ERROR", "ERROR"]
    assert queued_tasks() == []


def test_rows_signed_with_a_previous_secret_key_are_still_sent(
    titles: list[str],
) -> None:
    with override_settings(SECRET_KEY="the key before"):
        Article.objects.create(title="a")
    purge()
    with override_settings(SECRET_KEY="the key now"):
        assert _relay.run(everything=True) == 0
    with override_settings(
        SECRET_KEY="the key now", SECRET_KEY_FALLBACKS=["the key before"]
    ):
        assert _relay.run(everything=True) == 1
        run_queued()
    assert titles == ["a"]


@pytest.mark.usefixtures("titles")
def test_the_relay_leaves_calls_of_receivers_it_does_not_know(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver renamed or removed: its calls wait, and one ERROR says so."""
    for title in "ab":
        Article.objects.create(title=title)
    purge()
    for row in OutboxCall.objects.all():
        _, *rest = pickle.loads(row.payload[32:])
        renamed = (_payload.FORMAT, "tests.gone.reindex", *rest[1:])
        row.payload = _outbox.signed(pickle.dumps(renamed))
        row.save()
    assert _relay.run(everything=True) == 0
    assert _relay.run(everything=True) == 0
    told = [
        r.getMessage() for r in caplog.records if "its outbox calls wait" in r.message
    ]
    assert told == [
        (
            "Relay: no async receiver 'tests.gone.reindex' in this process; "
            "its outbox calls wait"
        )
    ]
    assert states() == [State.SENT, State.SENT]


class KeepOff:
    """A router that keeps some apps' tables off one database."""

    def __init__(self, alias: str, *app_labels: str) -> None:
        self.alias = alias
        self.app_labels = app_labels

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if db == self.alias and app_label in self.app_labels:
            return False
        return None


def test_the_relay_looks_where_the_outbox_table_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _relay.aliases() == ["default", "other"]
    with override_settings(DATABASE_ROUTERS=[KeepOff("other", "django_q_signals")]):
        assert _relay.aliases() == ["default"]
    monkeypatch.setattr(OutboxCall._meta, "db_table", "not_migrated_here")
    assert _relay.aliases() == []


def test_the_relay_asks_a_receivers_own_broker(connect: Connect[Any]) -> None:
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ

    @connect(custom, outbox=True, q_options={"broker": ORM(list_key="mail")})
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    later = timezone.now() + timedelta(seconds=31)
    # The task is on that broker: on its way.
    assert _relay.run(now=later) == 0
    OrmQ.objects.filter(key="mail").delete()
    assert _relay.run(now=later) == 1
    assert OrmQ.objects.filter(key="mail").count() == 1


@pytest.mark.usefixtures("titles")
def test_a_broker_that_cannot_say_how_full_it_is_keeps_sent_calls_waiting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    Article.objects.create(title="a")
    purge()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", {"host": "127.0.0.1", "port": port})
    monkeypatch.setattr(_brokers, "_brokers", {})  # the one that sent it
    # Sending it again could run it twice, while it may be on its way.
    assert _relay.run(now=timezone.now() + timedelta(seconds=31)) == 0
    assert "Relay: could not ask the broker for 'tests' how full it is" in caplog.text
    assert states() == [State.SENT]


def test_the_migration_signs_the_rows_written_unsigned(titles: list[str]) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module(
        "django_q_signals.migrations.0003_sign_payloads"
    )
    for title in "ab":
        Article.objects.create(title=title)
    purge()
    first, second = OutboxCall.objects.order_by("pk")
    # Written by 1.0, before rows were signed.
    OutboxCall.objects.filter(pk=first.pk).update(payload=bytes(first.payload)[32:])
    with connection.schema_editor() as editor:
        migration.sign_payloads(apps, editor)
    assert OutboxCall.objects.get(pk=second.pk).payload == second.payload
    assert _relay.run(everything=True) == 2
    run_queued()
    assert sorted(titles) == ["a", "b"]


def test_the_migration_schedules_the_relay() -> None:
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("migrate", "django_q_signals", "0001", verbosity=0)
    assert not Schedule.objects.exists()
    call_command("migrate", "django_q_signals", verbosity=0)
    schedule = Schedule.objects.get(name="django_q_signals: outbox relay")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
        "django_q_signals.worker.relay",
        Schedule.MINUTES,
        1,
    )
    assert schedule.repeats == -1


def test_the_relay_is_scheduled_only_where_the_router_puts_django_q() -> None:
    from django.core.management import call_command
    from django_q.models import Schedule

    def migrate_other_again() -> None:
        # Back to before the relay's schedule, then forward to the latest.
        call_command(
            "migrate", "django_q_signals", "0001", database="other", verbosity=0
        )
        call_command("migrate", "django_q_signals", database="other", verbosity=0)

    # What the test database's own migration scheduled, if no test has
    # emptied "other" since.
    Schedule.objects.using("other").all().delete()
    with override_settings(DATABASE_ROUTERS=[KeepOff("other", "django_q")]):
        migrate_other_again()
    assert not Schedule.objects.using("other").exists()
    migrate_other_again()
    assert Schedule.objects.using("other").count() == 1


def test_the_scheduled_function_relays(titles: list[str]) -> None:
    from django_q_signals.worker import relay

    with transaction.atomic():
        Article.objects.create(title="a")
    purge()
    OutboxCall.objects.update(created=timezone.now() - timedelta(minutes=1))
    OutboxCall.objects.update(state=State.QUEUED)
    assert relay() == 1


# What is pending


def test_pending_gives_the_calls_still_to_run_for_a_row(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def index(**kwargs: Any) -> None:
        pass

    @connect(post_save, sender=Article, outbox=True)
    def notify(**kwargs: Any) -> None:
        pass

    article = Article.objects.create(title="a")
    other = Article.objects.create(title="b")
    assert pending(article).count() == 2
    assert [call.receiver for call in pending(article, index)] == [path(index)]
    assert pending(article, path(notify)).count() == 1
    run_queued()
    assert not pending(article).exists()
    assert not pending(other).exists()


def test_the_outbox_querysets_select_calls_as_the_relay_does(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, outbox=True, retries=1, retry_backoff=60)
    def charge(instance: Article, **kwargs: Any) -> None:
        raise ValueError(f"declined: {instance.title}")

    @connect(post_save, sender=Article, outbox=True)
    def notify(**kwargs: Any) -> None:
        pass

    for title in "ab":
        Article.objects.create(title=title)
    for task in queued_tasks():
        if task["args"][0][1] == path(charge):
            with pytest.raises(ValueError, match="declined"):
                run_call(*task["args"])
    purge()
    now = timezone.now()
    calls = OutboxCall.objects.all()
    failed = calls.failed().of_handler(path(charge))
    assert [call.error.splitlines()[-1] for call in failed.order_by("pk")] == [
        "ValueError: declined: a",
        "ValueError: declined: b",
    ]
    assert not calls.failed().of_handler(notify).exists()
    # Their retries are a minute away; notify's calls were sent just now.
    assert not calls.due(now, written_before=now).exists()
    assert calls.unstarted(sent_before=now).of_handler(notify).count() == 2
    assert not calls.unstarted(sent_before=now - timedelta(minutes=1)).exists()
    assert calls.due(now + timedelta(minutes=2), written_before=now).count() == 2

    first = calls.of_handler(notify).order_by("pk")[0]
    calls.filter(pk=first.pk).update(state=State.RUNNING, due=now + timedelta(1))
    assert list(calls.live_claims(now)) == [first]
    assert calls.without_live_claims(now).count() == 3
    # A claim expired: no longer live, and due again.
    assert not calls.live_claims(now + timedelta(2)).exists()
    assert first in calls.due(now + timedelta(2), written_before=now)


def test_pending_takes_a_handlers_path_whatever_its_dispatch_uids(
    connect: Connect[Any],
) -> None:
    def index(**kwargs: Any) -> None:
        pass

    def index_all(**kwargs: Any) -> None:
        pass

    connect(post_save, sender=Article, outbox=True, dispatch_uid="search")(index)
    connect(post_save, sender=Article, outbox=True, dispatch_uid="feed")(index)
    connect(post_save, sender=Article, outbox=True)(index_all)
    article = Article.objects.create(title="a")
    assert pending(article, path(index)).count() == 2
    assert pending(article, index).count() == 2
    [call] = pending(article, f"{path(index)}#feed")
    assert call.receiver == f"{path(index)}#feed"
    assert pending(article, path(index_all)).count() == 1


def test_pending_lists_the_calls_of_a_snapshot_receiver(connect: Connect[Any]) -> None:
    titles: list[str] = []

    @connect(post_save, sender=Article, outbox=True, snapshot=True)
    def handler(instance: Article, **kwargs: Any) -> None:
        titles.append(instance.title)

    article = Article.objects.create(title="a")
    Article.objects.update(title="b")
    [call] = pending(article)
    assert (call.model, call.receiver) == ("tests.Article", path(handler))
    run_queued()
    assert titles == ["a"]  # as it was at its signal
    assert not pending(article).exists()


def test_pending_lists_the_pre_save_call_of_a_row_being_created(
    connect: Connect[Any],
) -> None:
    received: list[Token] = []

    @connect(pre_save, sender=Token, outbox=True)
    def handler(instance: Token, **kwargs: Any) -> None:
        received.append(instance)

    token = Token.objects.create(label="a")  # Its pk is set before the save.
    [call] = pending(token)
    assert call.object_pk == str(token.pk)
    run_queued()
    assert [(each.pk, each.label) for each in received] == [(token.pk, "a")]
    assert not pending(token).exists()


def test_a_pre_save_call_of_a_row_with_no_pk_yet_names_no_row(
    connect: Connect[Any],
) -> None:
    @connect(pre_save, sender=Article, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    article = Article.objects.create(title="a")
    [call] = OutboxCall.objects.all()
    assert (call.model, call.object_pk) == ("", "")
    assert not pending(article).exists()


def test_a_call_whose_instance_is_no_model_instance_names_no_row(
    connect: Connect[Any],
) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, instance={"pk": 1})
    [call] = OutboxCall.objects.all()
    assert (call.model, call.object_pk) == ("", "")


def test_pending_finds_a_decimal_pk_the_database_gives_back_with_more_places(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Price, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    Price.objects.create(amount=Decimal("1.5"))
    Price.objects.create(amount=Decimal("100"))
    loaded = Price.objects.order_by("pk")
    assert [price.pk for price in loaded] == [Decimal("1.50"), Decimal("100.00")]
    assert [pending(price).count() for price in loaded] == [1, 1]
    assert sorted(OutboxCall.objects.values_list("object_pk", flat=True)) == [
        "1.5",
        "100",
    ]


def test_pending_finds_a_row_saved_through_a_proxy(connect: Connect[Any]) -> None:
    @connect(post_save, sender=ProxyArticle, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    proxied = ProxyArticle.objects.create(title="a")
    assert pending(Article.objects.get(pk=proxied.pk)).count() == 1


def test_pending_finds_a_row_with_a_composite_pk(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Membership, outbox=True)
    def welcome(**kwargs: Any) -> None:
        pass

    member = Membership.objects.create(team="core", person="ada", role="lead")
    Membership.objects.create(team="core", person="bob", role="dev")
    [row] = OutboxCall.objects.filter(object_pk='["core", "ada"]')
    assert [call.pk for call in pending(member)] == [row.pk]


def test_a_pk_longer_than_the_outbox_column_is_written_and_found(
    connect: Connect[Any],
) -> None:
    seen: list[str] = []

    @connect(post_save, sender=Page, outbox=True)
    def handler(instance: Page, **kwargs: Any) -> None:
        seen.append(instance.title)

    start = "https://example.com/" + "long/" * 100
    with transaction.atomic():
        first = Page.objects.create(url=start + "first", title="first")
        second = Page.objects.create(url=start + "second", title="second")
    [one] = pending(first)
    [two] = pending(second)
    assert one.pk != two.pk
    fits = OutboxCall._meta.get_field("object_pk").max_length
    assert fits is not None
    assert all(len(call.object_pk) <= fits for call in (one, two))
    assert one.object_pk.startswith("https://example.com/long/")
    run_queued()
    assert sorted(seen) == ["first", "second"]
    assert not OutboxCall.objects.exists()


def test_pending_uses_the_rows_database(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Ledger, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    ledger = Ledger.objects.create(entry="a")
    assert pending(ledger).count() == 1


# Guards


def test_the_test_helpers_run_and_remove_outbox_calls(titles: list[str]) -> None:
    from django_q_signals.testing import run_immediately

    with run_immediately():
        Article.objects.create(title="a")
    assert titles == ["a"]
    assert OutboxCall.objects.count() == 0


def test_a_missing_table_sends_the_call_without_the_outbox(
    titles: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(OutboxCall._meta, "db_table", "not_migrated_here")
    monkeypatch.setattr(_outbox, "_tables", set())
    monkeypatch.setattr(_outbox, "_missing_told", set())
    Article.objects.create(title="a")
    Article.objects.create(title="b")
    monkeypatch.undo()
    run_queued()
    assert titles == ["a", "b"]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "The outbox table is missing on the database 'default'" in (
        error.getMessage()
    )


def test_saving_an_outbox_row_triggers_no_receiver(connect: Connect[Any]) -> None:
    @connect(post_save, outbox=True)
    def everything(**kwargs: Any) -> None:
        pass

    Author.objects.create(name="a")
    assert OutboxCall.objects.count() == 1
    assert len(queued_tasks()) == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"outbox": "yes"}, "outbox must be True, False or None"),
        ({"outbox": True, "on_commit": False}, "cannot be combined with on_commit"),
        ({"retries": 2}, "retries needs outbox=True"),
        ({"outbox": True, "retries": -1}, "retries must be a whole number"),
        ({"outbox": True, "retries": 2, "retry_backoff": -1}, "retry_backoff must"),
        ({"outbox": True, "retry_backoff": 5}, "retry_backoff needs retries"),
    ],
)
def test_bad_outbox_options_are_refused(options: dict[str, Any], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        async_receiver(custom, **options)
