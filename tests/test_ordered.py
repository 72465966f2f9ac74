"""ordered=True and supersede=True: a row's calls one at a time, in order, and
only the latest state of a row that is saved again and again."""

from __future__ import annotations

import io
import logging
import pydoc
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models.signals import post_save
from django.test import override_settings
from django.utils import timezone

from django_q_signals import (
    _claim,
    _conf,
    _relay,
    async_receiver,
    pending,
)
from django_q_signals._registry import Receiver, all_receivers
from django_q_signals.models import OutboxCall
from tests.conftest import Connect, _broker_packs, custom, path, purge, rolled_back
from tests.models import Article

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

State = OutboxCall.State


def take_tasks() -> list[dict[str, Any]]:
    """Take the tasks off the broker, in the order they were queued."""
    from django_q.signing import SignedPackage

    return [SignedPackage.loads(pack) for pack in _broker_packs(take=True)]


def run(task: dict[str, Any]) -> Any:
    """Run one task as a worker does."""
    func = pydoc.locate(task["func"])
    assert callable(func), task["func"]
    return func(*task["args"], **task["kwargs"])


def run_all() -> None:
    """Run tasks until the broker is empty: those sent while running too."""
    while tasks := take_tasks():
        for task in tasks:
            run(task)


def states() -> list[str]:
    return list(OutboxCall.objects.order_by("pk").values_list("state", flat=True))


def save_titles(article: Article, *titles: str) -> None:
    for title in titles:
        article.title = title
        article.save()


@pytest.fixture
def seen(connect: Connect[Any]) -> list[str]:
    """The titles an ordered receiver's handler read, in the order it ran."""
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True)
    def index(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    return read


def test_a_later_call_waits_for_the_earlier_one_and_is_sent_when_it_is_done(
    seen: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    article = Article.objects.create(title="v1")
    save_titles(article, "v2")
    first, second = take_tasks()
    with caplog.at_level(logging.INFO, logger="django_q_signals"):
        run(second)  # A second worker takes it first: it waits.
    assert "or they wait for an earlier call" in caplog.text
    assert seen == []
    assert states() == [State.SENT, State.WAITING]
    [waiting] = pending(article).filter(state=State.WAITING)
    assert waiting.blocked_by is not None
    assert waiting.blocked_by.pk == pending(article).order_by("pk")[0].pk
    run(first)
    assert seen == ["v2"]  # Both read the row as it is now.
    # The waiting call went out as soon as the first was done.
    assert states() == [State.SENT]
    [resent] = take_tasks()
    run(resent)
    assert seen == ["v2", "v2"]
    assert not OutboxCall.objects.exists()


def test_a_call_waits_while_the_earlier_one_runs(seen: list[str]) -> None:
    article = Article.objects.create(title="v1")
    [_first] = take_tasks()
    running = OutboxCall.objects.get()
    later = timezone.now() + timedelta(minutes=1)
    OutboxCall.objects.filter(pk=running.pk).update(state=State.RUNNING, due=later)
    save_titles(article, "v2")
    [second] = take_tasks()
    run(second)
    assert seen == []
    assert states() == [State.RUNNING, State.WAITING]


def test_rows_and_receivers_do_not_wait_for_each_other(
    seen: list[str], connect: Connect[Any]
) -> None:
    unordered: list[str] = []

    @connect(post_save, sender=Article, outbox=True)
    def notify(instance: Article, **kwargs: Any) -> None:
        unordered.append(instance.title)

    a = Article.objects.create(title="a1")
    Article.objects.create(title="b1")
    save_titles(a, "a2")
    tasks = take_tasks()
    for task in reversed(tasks):
        run(task)
    # index: a's second call waited for its first; b's ran; notify: all ran.
    assert sorted(seen) == ["a2", "b1"]
    assert unordered == ["a2", "b1", "a2"]
    run_all()
    assert sorted(seen) == ["a2", "a2", "b1"]
    assert not OutboxCall.objects.exists()


def test_an_earlier_call_finishing_meanwhile_lets_the_call_run_at_once(
    seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker holding a call back marks it waiting just as the earlier
    call's worker finds nothing waiting to send: it runs the call itself."""
    article = Article.objects.create(title="v1")
    save_titles(article, "v2")
    _, second = take_tasks()
    first_row = OutboxCall.objects.order_by("pk")[0]
    hold_back = _claim.hold_back

    def earlier_call_done_meanwhile(alias: str, ids: list[int]) -> None:
        hold_back(alias, ids)
        OutboxCall.objects.filter(pk=first_row.pk).delete()

    monkeypatch.setattr(_claim, "hold_back", earlier_call_done_meanwhile)
    run(second)
    assert seen == ["v2"]
    assert not OutboxCall.objects.exists()


def test_a_failed_call_blocks_the_rows_later_calls_until_discarded(
    connect: Connect[Any],
) -> None:
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True)
    def charge(instance: Article, **kwargs: Any) -> None:
        if not read and instance.title == "v1":
            read.append("refused")
            raise ValueError("card declined")
        read.append(instance.title)

    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    with pytest.raises(ValueError, match="card declined"):
        run(first)
    save_titles(article, "v2", "v3")
    run_all()
    assert read == ["refused"]
    assert states() == [State.FAILED, State.WAITING, State.WAITING]
    blocker = OutboxCall.objects.order_by("pk")[0]
    assert {
        call.blocked_by for call in pending(article, charge).filter(state=State.WAITING)
    } == {blocker}

    stats = io.StringIO()
    call_command("qsignals", "--stats", stdout=stats)
    assert "1 failed, 2 waiting" in stats.getvalue()
    assert f"waiting for:   default:{blocker.pk} (failed) holds back 2 calls" in (
        stats.getvalue()
    )

    call_command("qsignals", "discard", f"default:{blocker.pk}", stdout=io.StringIO())
    run_all()
    assert read == ["refused", "v3", "v3"]
    assert not OutboxCall.objects.exists()


def test_a_retried_call_that_succeeds_lets_the_next_one_run(
    connect: Connect[Any],
) -> None:
    attempts: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True, retries=1)
    def charge(instance: Article, **kwargs: Any) -> None:
        attempts.append(instance.title)
        if len(attempts) == 1:
            raise ValueError("try again")

    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    with pytest.raises(ValueError, match="try again"):
        run(first)
    save_titles(article, "v2")
    run_all()
    assert states() == [State.FAILED, State.WAITING]
    call_command("qsignals", "retry", stdout=io.StringIO())
    run_all()
    assert attempts == ["v1", "v2", "v2"]
    assert not OutboxCall.objects.exists()


def test_the_relay_sends_a_waiting_call_nothing_holds_back(seen: list[str]) -> None:
    """A worker died between finishing a call and sending the next one."""
    article = Article.objects.create(title="v1")
    save_titles(article, "v2")
    _, second = take_tasks()
    run(second)
    assert states() == [State.SENT, State.WAITING]
    OutboxCall.objects.order_by("pk")[0].delete()
    assert _relay.run() == 1
    run_all()
    assert seen == ["v2"]


def test_a_batch_runs_a_rows_calls_in_turn(connect: Connect[Any]) -> None:
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True, batch=True)
    def index(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    with transaction.atomic():
        a = Article.objects.create(title="a")
        Article.objects.create(title="b")
        save_titles(a, "a2")
    [task] = take_tasks()
    run(task)
    assert read == ["a2", "b"]  # a's second call waited for its first.
    assert states() == [State.SENT]
    run_all()
    assert read == ["a2", "b", "a2"]
    assert not OutboxCall.objects.exists()


@pytest.fixture
def latest(connect: Connect[Any]) -> list[str]:
    """The titles a superseding receiver's handler read."""
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, supersede=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    return read


def test_a_newer_call_replaces_the_rows_calls_not_started(latest: list[str]) -> None:
    article = Article.objects.create(title="v1")
    save_titles(article, "v2", "v3")
    assert OutboxCall.objects.count() == 1
    run_all()
    assert latest == ["v3"]
    assert not OutboxCall.objects.exists()


def test_supersede_leaves_running_and_failed_for_good_calls(
    connect: Connect[Any],
) -> None:
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, supersede=True, retries=1)
    def reindex(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    article = Article.objects.create(title="v1")
    purge()
    now = timezone.now()
    [row] = OutboxCall.objects.all()
    copies = [
        (State.RUNNING, now + timedelta(minutes=1)),  # running: left alone
        (State.FAILED, None),  # out of retries: left for the operator
        (State.FAILED, now + timedelta(minutes=1)),  # a retry to come: dropped
        (State.WAITING, None),  # not started: dropped
    ]
    OutboxCall.objects.filter(pk=row.pk).update(state=State.SENT)
    for state, due in copies:
        row.pk = None
        row.state, row.due = state, due
        row.save()
    purge()
    save_titles(article, "v2")
    # v2's call took the place of the oldest call on its way: no task.
    assert states() == [State.SENT, State.RUNNING, State.FAILED]
    assert not take_tasks()


def test_supersede_in_one_transaction_runs_the_last_call(latest: list[str]) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="v1")
        save_titles(article, "v2")
    assert OutboxCall.objects.count() == 1
    run_all()
    assert latest == ["v2"]


def test_a_rolled_back_newer_call_replaces_nothing(latest: list[str]) -> None:
    article = Article.objects.create(title="v1")
    with rolled_back():
        save_titles(article, "v2")
    assert OutboxCall.objects.count() == 1
    run_all()
    assert latest == ["v1"]


def test_supersede_on_another_database(latest: list[str]) -> None:
    article = Article.objects.using("other").create(title="v1")
    save_titles(article, "v2", "v3")
    assert OutboxCall.objects.using("other").count() == 1
    assert not OutboxCall.objects.using("default").exists()
    run_all()
    assert latest == ["v3"]


def test_a_large_commit_takes_the_place_of_each_rows_calls_at_once(
    latest: list[str],
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rows = 210
    articles = Article.objects.bulk_create(
        [Article(title=f"{i} v1") for i in range(rows)]
    )
    for article in articles:  # one commit each: a call each on the broker
        article.save()
    on_the_broker = take_tasks()
    assert len(on_the_broker) == rows
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        for article in articles:
            article.title = article.title.replace("v1", "v2")
            article.save()
    # Each new call took its row's older call's place, in one executemany
    # (which Django records as "N times: SQL"), and no task was sent.
    statements = [q["sql"] for q in queries]
    [took] = [sql for sql in statements if "UPDATE" in sql and "payload_of" in sql]
    assert took.startswith(f"{rows} times: UPDATE")
    assert not take_tasks()
    assert OutboxCall.objects.count() == rows
    for task in on_the_broker:
        run(task)
    assert sorted(latest) == sorted(f"{i} v2" for i in range(rows))
    assert not OutboxCall.objects.exists()


def test_a_call_a_later_one_already_replaces_is_not_sent(
    latest: list[str],
) -> None:
    article = Article.objects.create(title="v1")
    [older] = OutboxCall.objects.all()
    take_tasks()
    with transaction.atomic():
        save_titles(article, "v2")
        [own] = OutboxCall.objects.exclude(pk=older.pk)
        # Another transaction's call for the row, written after this one's
        # and committed first: on the broker, it starts after this commit.
        own.pk = None
        own.state = State.SENT
        own.save()
        later = own.pk
    # It replaces the call on the broker before them both, too.
    assert list(OutboxCall.objects.values_list("pk", flat=True)) == [later]
    assert not take_tasks()


def test_supersede_with_autocommit_off_deletes_in_the_transaction(
    latest: list[str],
) -> None:
    article = Article.objects.create(title="v1")
    [first] = OutboxCall.objects.values_list("pk", flat=True)
    transaction.set_autocommit(False)
    try:
        save_titles(article, "v2")
        [second] = OutboxCall.objects.values_list("pk", flat=True)
        assert second != first  # deleted by the write, in the transaction
        transaction.rollback()
        assert list(OutboxCall.objects.values_list("pk", flat=True)) == [first]
        save_titles(article, "v3")
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    _relay.send_again(OutboxCall.objects.all())
    run_all()
    assert latest == ["v3"]


def test_supersede_in_sync_mode_runs_the_last_call_and_leaves_nothing(
    connect: Connect[Any],
) -> None:
    read: list[str] = []

    @connect(
        post_save, sender=Article, outbox=True, supersede=True, q_options={"sync": True}
    )
    def reindex(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    with transaction.atomic():
        article = Article.objects.create(title="v1")
        save_titles(article, "v2")
    assert read == ["v2"]
    assert not OutboxCall.objects.exists()


def test_supersede_with_coalesce_and_batch(connect: Connect[Any]) -> None:
    read: list[list[str]] = []

    @connect(
        post_save,
        sender=Article,
        outbox=True,
        supersede=True,
        coalesce=True,
        batch=True,
    )
    def reindex(instance: Article, **kwargs: Any) -> None:
        read.append([instance.title])

    first, second = Article.objects.bulk_create(
        [Article(title="a1"), Article(title="b1")]
    )
    save_titles(first, "a2")
    with transaction.atomic():
        save_titles(first, "a3", "a4")
        save_titles(second, "b2", "b3")
    assert OutboxCall.objects.count() == 2
    run_all()
    assert sorted(read) == [["a4"], ["b3"]]


def test_ordered_and_supersede_run_the_latest_after_the_running_call(
    connect: Connect[Any],
) -> None:
    read: list[str] = []

    @connect(post_save, sender=Article, outbox=True, ordered=True, supersede=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        read.append(instance.title)

    article = Article.objects.create(title="v1")
    [first] = take_tasks()
    OutboxCall.objects.update(state=State.RUNNING, due=timezone.now() + timedelta(1))
    save_titles(article, "v2", "v3")
    assert states() == [State.RUNNING, State.SENT]
    run_all()  # v3's call waits for the running one.
    assert read == []
    assert states() == [State.RUNNING, State.WAITING]
    OutboxCall.objects.update(due=timezone.now() - timedelta(1))  # it expired
    run(first)
    run_all()
    assert read == ["v3", "v3"]
    assert not OutboxCall.objects.exists()


@pytest.mark.parametrize("option", ["ordered", "supersede"])
def test_the_options_need_the_outbox(option: str) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    on: dict[str, Any] = {option: True}
    with pytest.raises(TypeError, match=f"{option} needs outbox=True"):
        async_receiver(post_save, sender=Article, **on)(handler)
    with pytest.raises(TypeError, match=f"{option} needs outbox=True"):
        async_receiver(post_save, sender=Article, outbox=False, **on)(handler)
    bad: dict[str, Any] = {option: "yes"}
    with pytest.raises(TypeError, match=f"{option} must be True, False or None"):
        async_receiver(post_save, outbox=True, **bad)(handler)


def test_the_settings_give_outbox_receivers_their_default(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def index(**kwargs: Any) -> None:
        pass

    @connect(post_save, sender=Article)
    def notify(**kwargs: Any) -> None:
        pass

    receivers = {receiver.name: receiver for receiver in all_receivers()}
    indexing, notifying = receivers[path(index)], receivers[path(notify)]

    def in_use(receiver: Receiver) -> tuple[bool, bool]:
        return receiver.keeps_order, receiver.supersedes

    assert in_use(indexing) == (False, False)
    with override_settings(Q_SIGNALS={"ORDERED": True, "SUPERSEDE": True}):
        assert in_use(indexing) == (True, True)
        assert "ordered=True" in " ".join(indexing.describe_options())
        # Without the outbox there is no record to keep order by.
        assert in_use(notifying) == (False, False)


@override_settings(Q_SIGNALS={"ORDERED": "yes", "SUPERSEDE": 1})
def test_bad_settings_are_reported() -> None:
    assert _conf.read()[1] == [
        "settings.Q_SIGNALS['ORDERED'] must be True or False, not 'yes'.",
        "settings.Q_SIGNALS['SUPERSEDE'] must be True or False, not 1.",
    ]


def test_the_admin_shows_which_call_a_waiting_one_waits_for_and_discards(
    seen: list[str], admin_client: Any
) -> None:
    article = Article.objects.create(title="v1")
    save_titles(article, "v2")
    _, second = take_tasks()
    run(second)
    blocker = OutboxCall.objects.order_by("pk")[0]
    page = admin_client.get("/admin/django_q_signals/outboxcall/").content.decode()
    assert f">{blocker.pk} (sent)</a>" in page
    admin_client.post(
        "/admin/django_q_signals/outboxcall/",
        {"action": "discard", "_selected_action": [blocker.pk], "post": "yes"},
    )
    # The waiting call went out as its blocker was discarded.
    assert states() == [State.SENT]
    run_all()
    assert seen == ["v2"]
    assert not OutboxCall.objects.exists()


def test_calls_without_a_row_do_not_wait(connect: Connect[Any]) -> None:
    read: list[int] = []

    @connect(custom, outbox=True, ordered=True)
    def tally(n: int, **kwargs: Any) -> None:
        read.append(n)

    custom.send(sender=None, n=1)
    custom.send(sender=None, n=2)
    first, second = take_tasks()
    run(second)
    run(first)
    assert read == [2, 1]
    call = OutboxCall(receiver=path(tally), model="", object_pk="", pk=10)
    assert not call.earlier_calls().exists()


def test_calls_without_a_row_supersede_nothing(connect: Connect[Any]) -> None:
    read: list[int] = []

    @connect(custom, outbox=True, supersede=True)
    def tally(n: int, **kwargs: Any) -> None:
        read.append(n)

    custom.send(sender=None, n=1)
    with transaction.atomic():
        custom.send(sender=None, n=2)
        custom.send(sender=None, n=3)
    assert OutboxCall.objects.count() == 3
    run_all()
    assert read == [1, 2, 3]


def test_stats_name_the_first_rows_holding_calls_back(seen: list[str]) -> None:
    receiver_name = "tests.test_ordered.seen.<locals>.index"
    assert any(receiver.name == receiver_name for receiver in all_receivers())

    def call(pk: int, state: str) -> OutboxCall:
        return OutboxCall(
            receiver=receiver_name,
            model="tests.Article",
            object_pk=str(pk),
            state=state,
            payload=b"",
        )

    OutboxCall.objects.bulk_create(
        call(pk, state)
        for pk in range(1, 13)
        for state in (State.RUNNING, State.WAITING)
    )
    # A row whose waiting call nothing holds back any more: the relay sends it.
    call(0, State.WAITING).save()
    out = io.StringIO()
    call_command("qsignals", "--stats", stdout=out)
    [line] = [line for line in out.getvalue().splitlines() if "waiting for:" in line]
    first = OutboxCall.objects.order_by("pk")[0]
    assert f"waiting for:   default:{first.pk} (running) holds back 1 call;" in line
    assert line.count("holds back") == 10
    assert line.endswith("; and 2 more rows")
