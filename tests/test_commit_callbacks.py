"""Calls deferred to a commit follow Django's on_commit rules, call by call,
whatever other commit callbacks do."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save
from django.test import TestCase

from django_q_signals import async_receiver
from django_q_signals.testing import run_immediately
from tests.conftest import (
    Connect,
    custom,
    queued_tasks,
    rolled_back,
    run_queued,
)
from tests.models import Article, Author, Comment, Tag

pytestmark = pytest.mark.django_db(transaction=True)


class Refused(Exception):
    pass


def refuse() -> None:
    raise Refused("a commit callback of the project's")


def commit(*steps: Callable[[], object]) -> None:
    with transaction.atomic():
        for step in steps:
            step()


def send(n: int) -> Callable[[], object]:
    return lambda: custom.send(sender=None, n=n)


def test_a_raising_callback_keeps_the_calls_before_it(numbers: list[int]) -> None:
    with pytest.raises(Refused):
        commit(send(1), lambda: transaction.on_commit(refuse), send(2))
    # Django runs no callback after the one that raised: n=2 goes with it.
    run_queued()
    assert numbers == [1]


def test_calls_dropped_after_a_raising_callback_stay_dropped(
    numbers: list[int],
) -> None:
    with pytest.raises(Refused):
        commit(lambda: transaction.on_commit(refuse), send(1))
    with transaction.atomic():
        custom.send(sender=None, n=2)
    run_queued()
    assert numbers == [2]


def test_a_raising_robust_callback_stops_nothing(numbers: list[int]) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        transaction.on_commit(refuse, robust=True)
        custom.send(sender=None, n=2)
    run_queued()
    assert numbers == [1, 2]


@pytest.fixture
def saved(connect: Connect[Any]) -> list[str]:
    """What was saved, as the handlers of Article and Tag saves see it."""
    received: list[str] = []

    @connect(post_save, sender=Article)
    def article_saved(instance: Article, **kwargs: Any) -> None:
        received.append(f"article {instance.title}")

    @connect(post_save, sender=Tag)
    def tag_saved(instance: Tag, **kwargs: Any) -> None:
        received.append(f"tag {instance.name}")

    return received


def test_a_callback_that_opens_a_transaction_holds_back_no_call(
    saved: list[str],
) -> None:
    with transaction.atomic():
        Article.objects.create(title="a")
        # get_or_create saves inside atomic(): a transaction of its own, here.
        transaction.on_commit(lambda: Tag.objects.get_or_create(name="t"))
        Article.objects.create(title="b")
    run_queued()
    assert saved == ["article a", "tag t", "article b"]


def test_a_callback_that_adds_to_a_many_to_many_holds_back_no_call(
    connect: Connect[Any], saved: list[str]
) -> None:
    from django.db.models.signals import m2m_changed

    @connect(m2m_changed, sender=Article.tags.through)
    def tagged(action: str, pk_set: set[int] | None, **kwargs: Any) -> None:
        saved.append(f"{action} {sorted(pk_set or ())}")

    tag = Tag.objects.create(name="t")
    run_queued()
    saved.clear()
    with transaction.atomic():
        article = Article.objects.create(title="a")
        transaction.on_commit(lambda: article.tags.add(tag))
        Article.objects.create(title="b")
    run_queued()
    assert saved == [
        "article a",
        f"pre_add [{tag.pk}]",
        f"post_add [{tag.pk}]",
        "article b",
    ]


def test_a_callback_that_deletes_holds_back_no_call(
    connect: Connect[Any], saved: list[str]
) -> None:
    @connect(post_delete, sender=Tag)
    def tag_deleted(**kwargs: Any) -> None:
        saved.append(f"deleted tag {kwargs['_instance_pk']}")

    tag = Tag.objects.create(name="old")
    pk = tag.pk
    run_queued()
    saved.clear()
    with transaction.atomic():
        Article.objects.create(title="a")
        transaction.on_commit(tag.delete)
        Article.objects.create(title="b")
    run_queued()
    assert saved == ["article a", f"deleted tag {pk}", "article b"]


@pytest.mark.usefixtures("numbers")
def test_each_call_is_sent_when_its_callbacks_run() -> None:
    """A callback registered between two signals sees the first one queued
    and the second one not yet."""
    seen: list[int] = []
    with transaction.atomic():
        custom.send(sender=None, n=1)
        transaction.on_commit(lambda: seen.append(len(queued_tasks())))
        custom.send(sender=None, n=2)
    assert seen == [1]
    assert len(queued_tasks()) == 2


def test_a_run_of_calls_is_one_callback(numbers: list[int]) -> None:
    with transaction.atomic():
        for n in range(5):
            custom.send(sender=None, n=n)
        assert len(connection.run_on_commit) == 1
    run_queued()
    assert numbers == [0, 1, 2, 3, 4]


@pytest.mark.django_db
def test_capture_on_commit_callbacks_sees_one_callback_per_commit(
    numbers: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        transaction.atomic(),
    ):
        for n in range(3):
            custom.send(sender=None, n=n)
    assert len(callbacks) == 1
    run_queued()
    assert numbers == [0, 1, 2]


@pytest.mark.django_db
def test_capture_on_commit_callbacks_runs_what_its_block_sent(
    numbers: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    """In a test's own transaction, code that would run in autocommit sends
    each call on its own, so a capture gets exactly the calls of its block."""
    custom.send(sender=None, n=1)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        custom.send(sender=None, n=2)
        custom.send(sender=None, n=3)
    assert len(callbacks) == 2
    run_queued()
    assert numbers == [2, 3]


def test_update_or_create_in_a_loop_shares_one_batch_but_for_the_last_row(
    connect: Connect[Any],
) -> None:
    """update_or_create opens a savepoint per row: once released, a row's
    call joins the calls before it."""
    batches: list[int] = []

    @connect(post_save, sender=Author, batch=True)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        for n in range(20):
            Author.objects.update_or_create(name=f"author {n}")
    batches = [len(task["args"][0][3]) for task in queued_tasks()]
    assert batches == [19, 1]


def test_savepoints_rolled_back_in_a_loop_drop_exactly_their_calls(
    numbers: list[int],
) -> None:
    with transaction.atomic():
        for n in range(10):
            with transaction.atomic():
                custom.send(sender=None, n=n)
                if n % 3 == 0:
                    transaction.set_rollback(True)
    run_queued()
    assert numbers == [1, 2, 4, 5, 7, 8]


def test_a_savepoint_rolled_back_after_merging_drops_only_its_calls(
    numbers: list[int],
) -> None:
    with transaction.atomic():
        with transaction.atomic():
            custom.send(sender=None, n=1)
        with transaction.atomic():
            custom.send(sender=None, n=2)
        custom.send(sender=None, n=3)  # joins 1 and 2: their savepoints are gone
        with rolled_back():
            custom.send(sender=None, n=4)
            with transaction.atomic():
                custom.send(sender=None, n=5)
            custom.send(sender=None, n=6)
        custom.send(sender=None, n=7)
    run_queued()
    assert numbers == [1, 2, 3, 7]


def test_calls_in_a_rolled_back_outer_savepoint_go_with_it(
    numbers: list[int],
) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        with rolled_back():
            with transaction.atomic():
                custom.send(sender=None, n=2)
            custom.send(sender=None, n=3)
            with transaction.atomic():
                custom.send(sender=None, n=4)
        custom.send(sender=None, n=5)
    run_queued()
    assert numbers == [1, 5]


def test_a_callback_registered_inside_a_savepoint_splits_the_calls(
    numbers: list[int],
) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        with rolled_back():
            transaction.on_commit(refuse)
        custom.send(sender=None, n=2)
    run_queued()
    assert numbers == [1, 2]


def test_each_thread_commits_its_own_calls(numbers: list[int]) -> None:
    started = threading.Barrier(2)
    errors: list[BaseException] = []

    def commit(first: int) -> None:
        try:
            with transaction.atomic():
                custom.send(sender=None, n=first)
                started.wait(timeout=10)
                custom.send(sender=None, n=first + 1)
                if first == 10:
                    transaction.set_rollback(True)
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=commit, args=(n,)) for n in (0, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    run_queued()
    assert numbers == [0, 1]


def test_asend_defers_to_the_commit(numbers: list[int]) -> None:
    async def send(n: int) -> None:
        await custom.asend(sender=None, n=n)

    send_now: Callable[[int], None] = async_to_sync(send)
    with transaction.atomic():
        send_now(1)
        assert queued_tasks() == []
    with rolled_back():
        send_now(2)
    run_queued()
    assert numbers == [1]


def test_a_cascade_sends_a_call_per_row_it_deletes(connect: Connect[Any]) -> None:
    deleted: list[str] = []

    @connect(post_delete, sender=Article)
    def article_deleted(_instance_pk: int, **kwargs: Any) -> None:
        deleted.append(f"article {_instance_pk}")

    @connect(post_delete, sender=Comment)
    def comment_deleted(_instance_pk: int, **kwargs: Any) -> None:
        deleted.append(f"comment {_instance_pk}")

    article = Article.objects.create(title="a")
    comments = [Comment.objects.create(article=article, text=str(n)) for n in (1, 2)]
    expected = [f"article {article.pk}"] + [f"comment {c.pk}" for c in comments]
    with transaction.atomic():
        article.delete()
        assert len(connection.run_on_commit) == 1
    run_queued()
    assert sorted(deleted) == expected


class CapturesInATestCase(TestCase):
    """Django's captureOnCommitCallbacks runs the callbacks registered in its
    block: in a test's own transaction, exactly the calls made in it."""

    def setUp(self) -> None:
        self.names: list[str] = []

        def author_saved(instance: Author, **kwargs: Any) -> None:
            self.names.append(instance.name)

        async_receiver(post_save, sender=Author)(author_saved)
        self.addCleanup(post_save.disconnect, author_saved, sender=Author)
        self.enterContext(run_immediately())
        Author.objects.create(name="made by setUp")

    def test_calls_of_savepoints_inside_the_capture_only(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            Author.objects.update_or_create(name="a")
            Author.objects.update_or_create(name="b")
        assert self.names == ["a", "b"]

    def test_a_block_without_a_savepoint_inside_the_capture(self) -> None:
        with (
            self.captureOnCommitCallbacks(execute=True) as callbacks,
            transaction.atomic(savepoint=False),
        ):
            Author.objects.create(name="inside")
        assert (len(callbacks), self.names) == (1, ["inside"])

    def test_a_captured_callback_run_by_hand_later(self) -> None:
        with self.captureOnCommitCallbacks() as callbacks, transaction.atomic():
            Author.objects.create(name="captured")
        # Later transactions of the test never take its call over.
        for name in ("later 1", "later 2"):
            with transaction.atomic():
                Author.objects.create(name=name)
        for callback in callbacks:
            callback()
        assert self.names == ["captured"]
