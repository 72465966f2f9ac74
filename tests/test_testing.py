"""The test helpers in django_q_signals.testing and their pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.test import TestCase

from django_q_signals.testing import CapturedCalls, capture_calls, run_immediately
from django_q_signals.worker import BatchError
from tests.conftest import Connect, custom, queued_tasks, rolled_back
from tests.models import Article

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


@pytest.fixture
def titles(connect: Connect[Any]) -> list[tuple[str | None, bool]]:
    """What a post_save receiver of Article saw, one item per run."""
    received: list[tuple[str | None, bool]] = []

    @connect(post_save, sender=Article)
    def handler(instance: Article | None, created: bool, **kwargs: Any) -> None:
        received.append((instance.title if instance else None, created))

    return received


@pytest.mark.django_db(transaction=True)
def test_run_immediately_runs_the_handler_at_commit_with_the_row_reloaded(
    connect: Connect[Any],
) -> None:
    seen: list[Article] = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        seen.append(instance)

    with run_immediately(), transaction.atomic():
        article = Article.objects.create(title="draft")
        assert seen == []
        Article.objects.filter(pk=article.pk).update(title="as committed")
    [instance] = seen
    assert instance is not article
    assert (instance.pk, instance.title) == (article.pk, "as committed")
    assert queued_tasks() == []


@pytest.mark.django_db(transaction=True)
def test_run_immediately_runs_nothing_for_a_rollback(
    titles: list[tuple[str | None, bool]],
) -> None:
    with run_immediately(), rolled_back():
        Article.objects.create(title="never")
    assert titles == []


@pytest.mark.django_db(transaction=True)
def test_run_immediately_passes_what_a_worker_would(connect: Connect[Any]) -> None:
    received: list[dict[str, Any]] = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    with run_immediately():
        custom.send(sender="tests", lock=_Unpicklable(), when={1, 2})
    [kwargs] = received
    # The unpicklable kwarg is dropped, as it is for a worker.
    assert kwargs == {"signal": custom, "sender": "tests", "when": {1, 2}}


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


@pytest.mark.django_db(transaction=True)
def test_run_immediately_raises_the_handlers_error(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        raise ValueError("handler failed")

    with run_immediately(), pytest.raises(ValueError, match="handler failed"):
        custom.send(sender=None)


@pytest.mark.django_db(transaction=True)
def test_run_immediately_runs_a_batched_receiver_in_batches(
    connect: Connect[Any],
) -> None:
    received: list[str] = []

    @connect(post_save, sender=Article, batch=2)
    def handler(instance: Article, **kwargs: Any) -> None:
        if instance.title == "b":
            raise ValueError("b is bad")
        received.append(instance.title)

    with run_immediately(), pytest.raises(BatchError) as error:
        _create_in_one_transaction("a", "b", "c", "d")
    # Two batches; one call failed, and every other call ran.
    assert str(error.value).startswith("1 of 2 calls")
    assert received == ["a", "c", "d"]


def _create_in_one_transaction(*titles: str) -> None:
    with transaction.atomic():
        for title in titles:
            Article.objects.create(title=title)


@run_immediately()
@pytest.mark.django_db(transaction=True)
def test_run_immediately_decorates_a_test(
    titles: list[tuple[str | None, bool]],
) -> None:
    Article.objects.create(title="decorated")
    assert titles == [("decorated", True)]


@pytest.mark.django_db
def test_in_a_wrapped_test_the_commit_callbacks_run_them(
    titles: list[tuple[str | None, bool]],
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    with run_immediately():
        Article.objects.create(title="never committed")
        assert titles == []
        with django_capture_on_commit_callbacks(execute=True):
            Article.objects.create(title="captured")
    assert titles == [("captured", True)]


class RunImmediatelyInATestCase(TestCase):
    def test_capture_on_commit_callbacks_runs_the_handler(self) -> None:
        received: list[str] = []

        def handler(instance: Article, **kwargs: Any) -> None:
            received.append(instance.title)

        from django_q_signals import async_receiver

        async_receiver(post_save, sender=Article)(handler)
        self.addCleanup(post_save.disconnect, handler, sender=Article)
        with run_immediately(), self.captureOnCommitCallbacks(execute=True):
            Article.objects.create(title="in a TestCase")
        assert received == ["in a TestCase"]


@pytest.mark.django_db(transaction=True)
def test_capture_calls_keeps_the_calls_instead_of_queuing_them(
    titles: list[tuple[str | None, bool]],
) -> None:
    with capture_calls() as calls:
        article = Article.objects.create(title="first")
        custom.send(sender=None)  # no async receiver: nothing to capture
    assert queued_tasks() == []
    [call] = calls
    assert call.name == "tests.test_testing.titles.<locals>.handler"
    assert call.handler.__qualname__ == "titles.<locals>.handler"
    assert call.signal is post_save
    assert call.sender is Article
    assert call.kwargs["instance"] == article
    assert call.kwargs["created"] is True
    assert repr(call) == (
        f"<CapturedCall {call.name}(instance=<tests.Article pk={article.pk}>)>"
    )
    assert titles == []


@pytest.mark.django_db(transaction=True)
def test_a_helper_gets_the_calls_of_the_commits_inside_its_block(
    titles: list[tuple[str | None, bool]],
) -> None:
    with transaction.atomic():
        Article.objects.create(title="before the block")
        with capture_calls() as calls:
            Article.objects.create(title="in the block")
        # The transaction has not committed: nothing was queued yet.
        assert list(calls) == []
    # Queued at the commit, as usual, after the block ended.
    assert len(queued_tasks()) == 2
    with capture_calls() as calls, transaction.atomic():
        Article.objects.create(title="in a transaction in the block")
    assert [call.kwargs["instance"].title for call in calls] == [
        "in a transaction in the block"
    ]


@pytest.mark.django_db(transaction=True)
def test_captured_calls_run_later_with_the_data_of_then(
    titles: list[tuple[str | None, bool]],
) -> None:
    with capture_calls() as calls:
        first = Article.objects.create(title="first")
        Article.objects.create(title="second")
    first.title = "edited"
    first.save()
    calls[0].run()
    assert titles == [("edited", True)]
    calls.run()
    assert titles == [("edited", True), ("edited", True), ("second", True)]


@pytest.mark.django_db(transaction=True)
def test_captured_kwargs_of_a_deleted_row(connect: Connect[Any]) -> None:
    @connect(post_delete, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    article = Article.objects.create(title="gone")
    pk = article.pk
    with capture_calls() as calls:
        article.delete()
    [call] = calls
    assert call.kwargs["instance"] is None
    assert call.kwargs["_instance_pk"] == pk


@pytest.mark.usefixtures("titles")
@pytest.mark.django_db(transaction=True)
def test_capture_calls_captures_nothing_for_a_rollback() -> None:
    with capture_calls() as calls, rolled_back():
        Article.objects.create(title="never")
    assert calls == []


@pytest.mark.django_db(transaction=True)
def test_the_innermost_helper_takes_the_calls(
    titles: list[tuple[str | None, bool]],
) -> None:
    with run_immediately():
        with capture_calls() as calls:
            Article.objects.create(title="captured")
        Article.objects.create(title="run")
    assert len(calls) == 1
    assert titles == [("run", True)]
    Article.objects.create(title="queued")
    assert len(queued_tasks()) == 1


@pytest.mark.django_db(transaction=True)
def test_nested_helpers_each_leave_their_own_place(numbers: list[int]) -> None:
    with run_immediately():
        with capture_calls() as calls:
            with run_immediately():
                custom.send(sender=None, n=1)
            custom.send(sender=None, n=2)
        custom.send(sender=None, n=3)
    assert numbers == [1, 3]
    assert [call.kwargs["n"] for call in calls] == [2]


@pytest.mark.usefixtures("qsignals_immediate")
@pytest.mark.django_db(transaction=True)
def test_the_qsignals_immediate_fixture(
    titles: list[tuple[str | None, bool]],
) -> None:
    Article.objects.create(title="fixture")
    assert titles == [("fixture", True)]


@pytest.mark.django_db(transaction=True)
def test_the_qsignals_calls_fixture(
    qsignals_calls: CapturedCalls, titles: list[tuple[str | None, bool]]
) -> None:
    article = Article.objects.create(title="fixture")
    assert [call.kwargs["instance"] for call in qsignals_calls] == [article]
    qsignals_calls.run()
    assert titles == [("fixture", True)]


def test_the_plugin_is_registered_by_its_entry_point(
    pytestconfig: pytest.Config,
) -> None:
    assert pytestconfig.pluginmanager.hasplugin("django_q_signals")
