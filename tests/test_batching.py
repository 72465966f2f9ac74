"""batch=True and batch=N: a commit's calls in shared tasks."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.test.utils import CaptureQueriesContext

from django_q_signals import async_receiver
from django_q_signals.worker import BatchError, run_batch
from tests.conftest import (
    Connect,
    TwoArguments,
    custom,
    path,
    queued_tasks,
    rolled_back,
    run_queued,
)
from tests.models import Article, Author, Membership, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def batch_sizes() -> list[int]:
    # A batch task's payload: (format, receiver, database, calls).
    return [len(task["args"][0][3]) for task in queued_tasks()]


@pytest.fixture
def titles(connect: Connect[Any]) -> list[tuple[bool, str | None]]:
    received: list[tuple[bool, str | None]] = []

    @connect(post_save, sender=Article, batch=True)
    def handler(instance: Article | None, created: bool, **kwargs: Any) -> None:
        received.append((created, instance.title if instance else None))

    return received


def test_a_commit_is_one_task_called_once_per_signal_in_order(
    titles: list[tuple[bool, str | None]],
) -> None:
    with transaction.atomic():
        articles = [Article.objects.create(title=f"a{i}") for i in range(5)]
        articles[0].title = "a0 edited"
        articles[0].save()
    [task] = queued_tasks()
    assert task["func"] == "django_q_signals.worker.run_batch"
    run_queued()
    # Each call reloads the row as committed, as it would unbatched.
    assert titles == [
        (True, "a0 edited"),
        *[(True, f"a{i}") for i in range(1, 5)],
        (False, "a0 edited"),
    ]


def test_batches_hold_at_most_n_calls(connect: Connect[Any]) -> None:
    received = []

    @connect(custom, batch=2)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        for n in range(5):
            custom.send(sender=None, n=n)
    assert batch_sizes() == [2, 2, 1]
    run_queued()
    assert received == [0, 1, 2, 3, 4]


@pytest.mark.usefixtures("titles")
def test_outside_a_transaction_each_signal_is_a_batch_of_one() -> None:
    Article.objects.create(title="a")
    Article.objects.create(title="b")
    assert batch_sizes() == [1, 1]


def test_savepoint_rollbacks_drop_exactly_their_calls(connect: Connect[Any]) -> None:
    received = []

    @connect(custom, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        custom.send(sender=None, n=1)
        with rolled_back():
            custom.send(sender=None, n=2)
        with transaction.atomic():
            custom.send(sender=None, n=3)
        with rolled_back():
            custom.send(sender=None, n=4)
    assert batch_sizes() == [2]
    run_queued()
    assert received == [1, 3]


def test_one_query_reloads_a_batch(titles: list[tuple[bool, str | None]]) -> None:
    with transaction.atomic():
        for i in range(50):
            Article.objects.create(title=str(i))
    [task] = queued_tasks()
    with CaptureQueriesContext(connection) as queries:
        assert run_batch(*task["args"]) == 50
    assert len(queries) == 1
    assert len(titles) == 50


def test_rows_deleted_since_cost_the_batch_no_query_more(
    titles: list[tuple[bool, str | None]],
) -> None:
    with transaction.atomic():
        articles = [Article.objects.create(title=str(i)) for i in range(5)]
    Article.objects.filter(pk__in=[articles[1].pk, articles[3].pk]).delete()
    [task] = queued_tasks()
    with CaptureQueriesContext(connection) as queries:
        assert run_batch(*task["args"]) == 5
    assert len(queries) == 1
    assert titles == [(True, "0"), (True, None), (True, "2"), (True, None), (True, "4")]


def test_a_batch_of_composite_pk_rows_some_deleted(connect: Connect[Any]) -> None:
    received: list[str | None] = []

    @connect(post_save, sender=Membership, batch=True)
    def handler(instance: Membership | None, **kwargs: Any) -> None:
        received.append(instance.role if instance else None)

    with transaction.atomic():
        for person in ("ada", "bob", "cy"):
            Membership.objects.create(team="core", person=person, role=person)
    Membership.objects.filter(person="bob").delete()
    run_queued()

    assert received == ["ada", None, "cy"]


def test_relations_are_loaded_once_for_a_batch(connect: Connect[Any]) -> None:
    received: list[tuple[str, list[str]]] = []

    @connect(
        post_save,
        sender=Article,
        batch=True,
        select_related=["author"],
        prefetch_related=["tags"],
    )
    def handler(instance: Article, **kwargs: Any) -> None:
        assert instance.author is not None
        received.append((instance.author.name, [t.name for t in instance.tags.all()]))

    author = Author.objects.create(name="Ada")
    tag = Tag.objects.create(name="x")
    with transaction.atomic():
        for i in range(10):
            Article.objects.create(title=str(i), author=author)
        Article.tags.through.objects.bulk_create(
            Article.tags.through(article=a, tag=tag) for a in Article.objects.all()
        )
    [task] = queued_tasks()
    with CaptureQueriesContext(connection) as queries:
        run_batch(*task["args"])
    assert len(queries) == 2  # the rows with their authors, then the tags
    assert received == [("Ada", ["x"])] * 10


def test_rows_gone_snapshots_and_unsaved_instances_as_unbatched(
    connect: Connect[Any],
) -> None:
    received: list[tuple[str, Any, Any]] = []

    @connect(post_save, sender=Article, batch=True)
    def saved(instance: Article | None, **kwargs: Any) -> None:
        received.append(("saved", instance, kwargs.get("_instance_pk")))

    @connect(post_delete, sender=Article, batch=True, snapshot=True)
    def deleted(instance: Article, **kwargs: Any) -> None:
        received.append(("deleted", instance.title, instance.pk))

    @connect(pre_save, sender=Article, batch=True)
    def unsaved(instance: Article, **kwargs: Any) -> None:
        received.append(("unsaved", instance.title, instance.pk))

    with transaction.atomic():
        article = Article.objects.create(title="gone")
        pk = article.pk
        article.delete()
    run_queued()
    assert sorted(received, key=str) == sorted(
        [("saved", None, pk), ("deleted", "gone", pk), ("unsaved", "gone", None)],
        key=str,
    )


def test_each_call_gets_its_own_instance(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article, batch=True)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append((instance, instance.title))
        instance.title = "changed by the handler"

    with transaction.atomic():
        article = Article.objects.create(title="a")
        article.save()
    run_queued()
    [(first, first_title), (second, second_title)] = received
    assert first is not second
    assert (first_title, second_title) == ("a", "a")


def test_batch_tasks_acknowledge_their_failures(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django Q2 would otherwise run a failed batch again, whole."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ACK_FAILURES", False)

    @connect(custom, batch=True)
    def batched(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def alone(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    acknowledged = {task["name"]: task.get("ack_failure") for task in queued_tasks()}
    assert acknowledged == {
        path(batched): True,
        path(alone): None,
    }


def test_a_failing_call_does_not_stop_the_others(connect: Connect[Any]) -> None:
    received = []

    @connect(custom, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        if n % 2:
            raise ValueError(f"odd {n}")
        received.append(n)

    with transaction.atomic():
        for n in range(5):
            custom.send(sender=None, n=n, instance=Author.objects.create(name=str(n)))
    [task] = queued_tasks()
    with pytest.raises(BatchError) as error:
        run_batch(*task["args"])
    assert received == [0, 2, 4]
    message = str(error.value)
    assert message.startswith(f"2 of 5 calls to {handler.__module__}.")
    assert "call 2 (instance=<tests.Author pk=" in message
    assert "): ValueError: odd 1; call 4 (" in message
    assert message.endswith("ValueError: odd 3")


def test_a_call_that_cannot_be_unpickled_fails_alone(connect: Connect[Any]) -> None:
    received = []

    @connect(custom, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    with transaction.atomic():
        for n in range(5):
            broken = TwoArguments(n, "broken") if n == 2 else None
            custom.send(sender=None, n=n, error=broken)
    [task] = queued_tasks()
    with pytest.raises(BatchError) as error:
        run_batch(*task["args"])
    assert received == [0, 1, 3, 4]
    assert str(error.value) == (
        f"1 of 5 calls to {path(handler)} failed: "
        "call 3: Could not unpickle its arguments: TypeError: "
        "TwoArguments.__init__() missing 1 required positional argument: 'reason'"
    )


@pytest.mark.parametrize("batch", [0, -1, "yes", 1.5])
def test_a_bad_batch_is_refused(batch: Any) -> None:
    with pytest.raises(TypeError, match="batch must be True, False or a whole number"):
        async_receiver(custom, batch=batch)


@pytest.mark.parametrize(
    "relations",
    [{"select_related": ["author"]}, {"prefetch_related": ["author"]}],
    ids=["select_related", "prefetch_related"],
)
def test_either_relation_option_alone(
    connect: Connect[Any], relations: dict[str, list[str]]
) -> None:
    received = []

    @connect(post_save, sender=Article, batch=True, **relations)
    def handler(instance: Article, **kwargs: Any) -> None:
        with CaptureQueriesContext(connection) as queries:
            assert instance.author is not None
            received.append((instance.author.name, len(queries)))

    author = Author.objects.create(name="Ada")
    with transaction.atomic():
        Article.objects.create(title="a", author=author)
        Article.objects.create(title="b", author=author)
    run_queued()
    assert received == [("Ada", 0), ("Ada", 0)]
