"""When calls are queued: at commit, at once, and when the broker fails."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_q_signals import _brokers, _send
from tests.conftest import (
    Connect,
    broker_is_orm_on,
    custom,
    path,
    queued_tasks,
    rolled_back,
    run_queued,
    transactions_writing_orm_tasks,
)
from tests.models import Article, Ledger

pytestmark = pytest.mark.django_db(transaction=True)


def test_nothing_is_queued_before_the_commit(numbers: list[int]) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        assert queued_tasks() == []
    assert len(queued_tasks()) == 1
    run_queued()
    assert numbers == [1]


@pytest.mark.usefixtures("numbers")
def test_rollback_drops_the_call() -> None:
    with rolled_back():
        custom.send(sender=None, n=1)
    assert queued_tasks() == []


def test_savepoint_rollback_drops_exactly_its_calls(numbers: list[int]) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        with rolled_back():
            custom.send(sender=None, n=2)
        with transaction.atomic():
            custom.send(sender=None, n=3)
            with transaction.atomic():
                custom.send(sender=None, n=4)
        custom.send(sender=None, n=5)
        with rolled_back():
            custom.send(sender=None, n=6)
            with transaction.atomic():
                custom.send(sender=None, n=7)
    run_queued()
    assert numbers == [1, 3, 4, 5]


def test_calls_survive_when_the_last_savepoint_rolls_back(numbers: list[int]) -> None:
    with transaction.atomic():
        with transaction.atomic():
            custom.send(sender=None, n=1)
        with rolled_back():
            custom.send(sender=None, n=2)
    run_queued()
    assert numbers == [1]


@pytest.mark.usefixtures("numbers")
def test_outside_a_transaction_the_call_is_queued_at_once() -> None:
    custom.send(sender=None, n=1)
    assert len(queued_tasks()) == 1


def test_on_commit_false_queues_inside_the_transaction(connect: Connect[Any]) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        custom.send(sender=None, n=1)
        # Queued before the commit: a worker could already take it.
        assert len(queued_tasks()) == 1
    with rolled_back():
        custom.send(sender=None, n=2)
    # The ORM broker on the same database shares the transaction, so the
    # rollback takes the task back; Redis keeps it.
    assert len(queued_tasks()) == (1 if broker_is_orm_on("default") else 2)


@pytest.mark.parametrize(
    ("at_most", "signals", "writes"),
    [
        (_send.WRITE_AT_MOST, 5, 1),
        # A large commit: a bounded number of tasks signed and written at once.
        (3, 7, 3),
    ],
)
def test_one_commit_is_one_write_to_the_broker(
    numbers: list[int],
    monkeypatch: pytest.MonkeyPatch,
    at_most: int,
    signals: int,
    writes: int,
) -> None:
    monkeypatch.setattr(_send, "WRITE_AT_MOST", at_most)
    before = broker_writes()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        for n in range(signals):
            custom.send(sender=None, n=n)
    if broker_is_orm_on("default"):
        assert len([q for q in queries if "django_q_ormq" in q["sql"]]) == writes
    else:
        assert broker_writes() == before + writes
    run_queued()
    assert numbers == list(range(signals))


@pytest.mark.parametrize(
    ("at_most", "signals", "transactions"),
    [(_send.WRITE_AT_MOST, 5, 1), (3, 7, 3)],
)
def test_a_write_to_the_orm_broker_is_one_transaction(
    numbers: list[int],
    monkeypatch: pytest.MonkeyPatch,
    at_most: int,
    signals: int,
    transactions: int,
) -> None:
    from django_q.conf import Conf

    if connection.vendor == "mysql":
        pytest.skip(
            "MySQL keeps no trace of the transaction that wrote a row, and "
            "mysqlclient sends an executemany INSERT as one statement anyway"
        )
    # A commit per task would be a durable write (a sync to disk) per task.
    monkeypatch.setattr(Conf, "ORM", "default")
    monkeypatch.setattr(_send, "WRITE_AT_MOST", at_most)
    with transactions_writing_orm_tasks() as counted, transaction.atomic():
        for n in range(signals):
            custom.send(sender=None, n=n)
    assert counted == [transactions]
    run_queued()
    assert numbers == list(range(signals))


@pytest.fixture
def orm_queue_refusing_its_third_row(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ORM broker's queue, on a database that fails the third row written
    to it (as a full disk or a lost connection would, part way)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", "default")
    refuse = "the queue is full"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "CREATE TRIGGER refuse_third BEFORE INSERT ON django_q_ormq "
                "WHEN (SELECT count(*) FROM django_q_ormq) >= 2 "
                f"BEGIN SELECT RAISE(ABORT, '{refuse}'); END"
            )
        elif connection.vendor == "mysql":
            cursor.execute(
                "CREATE TRIGGER refuse_third BEFORE INSERT ON django_q_ormq "
                "FOR EACH ROW BEGIN "
                "IF (SELECT count(*) FROM django_q_ormq) >= 2 THEN "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{refuse}'; END IF; END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION refuse_third() RETURNS trigger AS $$ BEGIN "
                "IF (SELECT count(*) FROM django_q_ormq) >= 2 THEN "
                f"RAISE EXCEPTION '{refuse}'; END IF; RETURN NEW; END "
                "$$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_third BEFORE INSERT ON django_q_ormq "
                "FOR EACH ROW EXECUTE FUNCTION refuse_third()"
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute("DROP TRIGGER refuse_third")
        else:
            cursor.execute("DROP TRIGGER refuse_third ON django_q_ormq")
            cursor.execute("DROP FUNCTION refuse_third()")


@pytest.mark.usefixtures("numbers", "orm_queue_refusing_its_third_row")
def test_a_write_to_the_orm_broker_that_fails_part_way_writes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with transaction.atomic():
        for n in range(5):
            custom.send(sender=None, n=n)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("Could not queue 5 task(s)")
    assert record.getMessage().endswith("they are lost")
    # Not two of the five, which would run while the log says none will.
    assert queued_tasks() == []


def broker_writes() -> int:
    """How many RPUSH commands the Redis server has run."""
    from django_q.brokers import get_broker

    broker = get_broker()
    if broker_is_orm_on("default"):
        return 0
    stats = broker.connection.info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


def test_calls_of_several_receivers_keep_their_order(connect: Connect[Any]) -> None:
    received: list[tuple[str, object]] = []

    @connect(post_save, sender=Article)
    def first(instance: Article, **kwargs: Any) -> None:
        received.append(("first", instance.title))

    @connect(custom)
    def second(n: int, **kwargs: Any) -> None:
        received.append(("second", n))

    with transaction.atomic():
        Article.objects.create(title="a")
        custom.send(sender=None, n=1)
        Article.objects.create(title="b")
    run_queued()
    assert received == [("first", "a"), ("second", 1), ("first", "b")]


@pytest.mark.django_db
def test_capture_on_commit_callbacks_runs_only_what_it_captured(
    numbers: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    custom.send(sender=None, n=1)
    with django_capture_on_commit_callbacks(execute=True):
        custom.send(sender=None, n=2)
    run_queued()
    assert numbers == [2]


def test_sync_mode_runs_the_handler_at_commit(connect: Connect[Any]) -> None:
    received = []

    @connect(custom, q_options={"sync": True})
    def handler(n: int, **kwargs: Any) -> None:
        received.append((n, Article.objects.count()))

    with transaction.atomic():
        custom.send(sender=None, n=1)
        Article.objects.create(title="committed first")
        assert received == []
    assert received == [(1, 1)]
    assert queued_tasks() == []


@pytest.mark.usefixtures("unreachable_redis")
def test_a_redis_that_refuses_connections_holds_no_request(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py would retry each refused connection with backoff, for seconds."""
    for name in ("index", "notify", "audit"):

        @connect(post_save, sender=Article, dispatch_uid=name)
        def handler(**kwargs: Any) -> None:
            pass

    started = time.monotonic()
    article = Article.objects.create(title="a")
    # redis-py's own retries, with backoff, would take several seconds.
    assert time.monotonic() - started < 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all(f"pk={article.pk}" in r.getMessage() for r in errors)


class SilentRedis:
    """A Redis server that takes connections and never answers.

    On a Unix socket: it needs no network, not even loopback.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for each in self.accepted:
            each.close()


@pytest.fixture
def silent_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[SilentRedis]:
    from django_q.conf import Conf

    server = SilentRedis(tmp_path / "redis.sock")
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", {"unix_socket_path": server.path})
    yield server
    server.close()


def test_a_redis_that_does_not_answer_holds_one_request_a_second(
    connect: Connect[Any], silent_redis: SilentRedis, caplog: pytest.LogCaptureFixture
) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    started = time.monotonic()
    Article.objects.create(title="first")
    waited = time.monotonic() - started
    assert 0.9 < waited < 3
    tried = len(silent_redis.accepted)

    later = [Article.objects.create(title=f"later {n}") for n in range(5)]
    # Not tried again for a while: no request waits on it.
    assert len(silent_redis.accepted) == tried
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 6
    for article, message in zip(later, errors[1:], strict=True):
        assert f"pk={article.pk}" in message
        assert "did not answer" in message


@pytest.mark.usefixtures("silent_redis")
def test_with_on_commit_false_a_broker_cooling_down_raises_at_once(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    import redis

    with pytest.raises(redis.TimeoutError):
        Article.objects.create(title="first")
    with pytest.raises(_brokers.BrokerUnavailable, match="did not answer"):
        Article.objects.create(title="second")


@pytest.mark.outbox
@pytest.mark.usefixtures("unreachable_redis")
@pytest.mark.parametrize(
    ("outbox", "fate"),
    [
        ((True, True), "they stay in the outbox, and the relay sends them later"),
        ((True, False), "1 of 2 calls stay in the outbox; the others are lost"),
    ],
)
def test_a_failure_to_queue_says_which_calls_the_outbox_keeps(
    connect: Connect[Any],
    caplog: pytest.LogCaptureFixture,
    outbox: tuple[bool, ...],
    fate: str,
) -> None:
    from django_q_signals.models import OutboxCall

    for number, kept in enumerate(outbox):

        @connect(post_save, sender=Article, outbox=kept, dispatch_uid=str(number))
        def handler(**kwargs: Any) -> None:
            pass

    with transaction.atomic():
        Article.objects.create(title="a")
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().endswith(fate)
    kept_rows = OutboxCall.objects.filter(state=OutboxCall.State.QUEUED)
    assert kept_rows.count() == sum(outbox)


@pytest.mark.usefixtures("unreachable_redis")
def test_failure_to_queue_after_commit_is_logged_not_raised(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        first = Article.objects.create(title="a")
        second = Article.objects.create(title="b")

    assert Article.objects.count() == 2
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert "Could not queue 2 task(s)" in message
    assert f"{handler.__qualname__}(instance=<tests.Article pk={first.pk}>)" in message
    assert f"(instance=<tests.Article pk={second.pk}>)" in message
    assert record.exc_info is not None


@pytest.mark.usefixtures("unreachable_redis")
def test_failure_to_queue_at_once_outside_a_transaction_is_logged(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    article = Article.objects.create(title="a")

    assert f"pk={article.pk}" in caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.ERROR


@pytest.mark.usefixtures("unreachable_redis")
def test_failure_to_queue_with_on_commit_false_raises_at_save(
    connect: Connect[Any],
) -> None:
    import redis

    @connect(post_save, sender=Article, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(redis.ConnectionError):
        Article.objects.create(title="a")


@pytest.fixture
def refusing_pre_enqueue() -> Iterator[None]:
    """A project's pre_enqueue receiver that refuses every task."""
    from django_q.signals import pre_enqueue

    def refuse(**kwargs: Any) -> None:
        raise RuntimeError("refused by pre_enqueue")

    pre_enqueue.connect(refuse)
    yield
    pre_enqueue.disconnect(refuse)


@pytest.mark.usefixtures("numbers", "refusing_pre_enqueue")
def test_a_task_django_q2_refuses_at_commit_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
    assert queued_tasks() == []
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage().startswith("Could not queue tests.")


@pytest.mark.usefixtures("refusing_pre_enqueue")
def test_a_task_django_q2_refuses_with_on_commit_false_raises(
    connect: Connect[Any],
) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(RuntimeError, match="refused by pre_enqueue"):
        custom.send(sender=None)


def test_a_broker_in_q_options_gets_the_tasks(connect: Connect[Any]) -> None:
    from django_q.brokers.orm import ORM

    @connect(custom, q_options={"broker": ORM("elsewhere")})
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        custom.send(sender=None)
        custom.send(sender=None)
    from django_q.models import OrmQ

    assert list(OrmQ.objects.values_list("key", flat=True)) == ["elsewhere"] * 2


def test_a_custom_broker_class_gets_the_tasks(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q.conf import Conf
    from django_q.models import OrmQ

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    monkeypatch.setattr(Conf, "BROKER_CLASS", "django_q.brokers.orm.ORM")
    with transaction.atomic():
        custom.send(sender=None, n=1)
        custom.send(sender=None, n=2)
    custom.send(sender=None, n=3)
    assert OrmQ.objects.using(Conf.ORM).count() == 3


@pytest.mark.usefixtures("numbers")
def test_nothing_is_formatted_for_debug_logs_nobody_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="django_q_signals")
    with transaction.atomic():
        custom.send(sender=None, n=1)
    assert caplog.records == []
    assert len(queued_tasks()) == 1


@pytest.mark.services
@pytest.mark.redis
def test_a_django_redis_connection_is_used_as_it_is(
    numbers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings
    from django_q.conf import Conf

    caches = {
        **settings.CACHES,
        "queue": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": settings.QSIGNALS_REDIS_URL,
        },
    }
    monkeypatch.setattr(Conf, "DJANGO_REDIS", "queue")
    with override_settings(CACHES=caches):
        with transaction.atomic():
            custom.send(sender=None, n=1)
        run_queued()
    assert numbers == [1]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_manual_transaction_management_is_refused_as_on_commit_refuses_it(
    connect: Connect[Any],
) -> None:
    from django.db.transaction import TransactionManagementError

    @connect(post_save, sender=Ledger)
    def handler(**kwargs: Any) -> None:
        pass

    transaction.set_autocommit(False, using="other")
    try:
        with pytest.raises(TransactionManagementError, match="on_commit=False"):
            Ledger.objects.create(entry="never committed")
        assert queued_tasks() == []
        transaction.rollback(using="other")
    finally:
        transaction.set_autocommit(True, using="other")


@pytest.mark.outbox
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_in_manual_transaction_management_outbox_calls_wait_for_the_relay(
    connect: Connect[Any],
) -> None:
    from django_q_signals import _relay
    from django_q_signals.models import OutboxCall

    @connect(post_save, sender=Ledger, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    transaction.set_autocommit(False, using="other")
    try:
        Ledger.objects.create(entry="kept")
        transaction.commit(using="other")
        Ledger.objects.create(entry="rolled back")
        transaction.rollback(using="other")
    finally:
        transaction.set_autocommit(True, using="other")
    assert queued_tasks() == []
    rows = OutboxCall.objects.using("other").all()
    assert [row.state for row in rows] == ["queued"]
    assert _relay.run(everything=True) == 1
    assert len(queued_tasks()) == 1


class Boom(Exception):
    pass


def test_a_sync_task_that_raises_keeps_the_calls_queued_before_it(
    connect: Connect[Any],
) -> None:
    @connect(custom)
    def queued(**kwargs: Any) -> None:
        pass

    @connect(custom, q_options={"sync": True})
    def run_here(**kwargs: Any) -> None:
        raise Boom

    @connect(custom)
    def after(**kwargs: Any) -> None:
        pass

    with pytest.raises(Boom), transaction.atomic():
        custom.send(sender=None, n=1)
    # As Django runs no commit callback after one that raised.
    assert [task["name"] for task in queued_tasks()] == [path(queued)[-100:]]


def test_a_broker_object_that_fails_slowly_cools_down_too(
    connect: Connect[Any], silent_redis: SilentRedis, caplog: pytest.LogCaptureFixture
) -> None:
    import redis
    from django_q.brokers.redis_broker import Redis

    broker = Redis(list_key="own")
    broker.connection = redis.Redis(
        unix_socket_path=silent_redis.path, socket_timeout=0.5
    )

    @connect(custom, q_options={"broker": broker})
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    tried = len(silent_redis.accepted)
    custom.send(sender=None, n=2)
    assert len(silent_redis.accepted) == tried
    assert "did not answer" in caplog.records[-1].getMessage()
