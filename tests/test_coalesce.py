"""coalesce=True: the calls of one commit for the same row become one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal

from django_q_signals import _outbox, async_receiver
from tests.conftest import Connect, custom, queued_tasks, rolled_back, run_queued
from tests.models import Article, Author, ProxyArticle

pytestmark = pytest.mark.django_db(transaction=True)

Seen = tuple[str, str | None, bool | None, frozenset[str] | None]


@pytest.fixture
def seen(connect: Connect[Any]) -> list[Seen]:
    """(signal, title, created, update_fields) of each run of the handler."""
    received: list[Seen] = []

    @connect([post_save, post_delete], sender=Article, coalesce=True)
    def reindex(signal: Any, instance: Article | None, **kwargs: Any) -> None:
        name = "post_save" if signal is post_save else "post_delete"
        title = instance.title if instance else None
        fields = kwargs.get("update_fields")
        received.append((name, title, kwargs.get("created"), fields))

    return received


def test_saves_of_a_row_become_one_call(seen: list[Seen]) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="a")
        for title in ("b", "c", "d", "e"):
            article.title = title
            article.save(update_fields=["title"])
    run_queued()
    # Created by one of them; every field saved by the first.
    assert seen == [("post_save", "e", True, None)]


def test_update_fields_are_the_union_of_the_saves(seen: list[Seen]) -> None:
    article = Article.objects.create(title="a")
    run_queued()
    seen.clear()
    with transaction.atomic():
        article.title = "b"
        article.save(update_fields=["title"])
        article.author = Author.objects.create(name="Ada")
        article.save(update_fields=["author"])
    run_queued()
    assert seen == [("post_save", "b", False, frozenset({"title", "author"}))]


def test_a_save_then_a_delete_is_one_delete(seen: list[Seen]) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="a")
        article.delete()
    run_queued()
    assert seen == [("post_delete", None, None, None)]


def test_rows_keep_the_order_of_their_last_signals(seen: list[Seen]) -> None:
    with transaction.atomic():
        first = Article.objects.create(title="first")
        Article.objects.create(title="second")
        first.save()
    run_queued()
    assert [title for _, title, _, _ in seen] == ["second", "first"]


def test_a_rolled_back_savepoint_leaves_the_earlier_call(seen: list[Seen]) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="kept")
        with rolled_back():
            article.title = "rolled back"
            article.save()
    run_queued()
    assert seen == [("post_save", "kept", True, None)]


def test_calls_are_merged_once_their_savepoints_are_released(
    seen: list[Seen],
) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="a")
        Article.objects.create(title="saved once")
        with transaction.atomic():
            article.title = "b"
            article.save(update_fields=["title"])
        article.title = "c"
        article.save(update_fields=["title"])
    run_queued()
    assert seen == [
        ("post_save", "saved once", True, None),
        ("post_save", "c", True, None),
    ]


def _save(article: Article, update_fields: Any) -> None:
    """A save, or with update_fields other than a set of names, a post_save
    sent by hand (None: without update_fields)."""
    if isinstance(update_fields, frozenset):
        article.save(update_fields=update_fields)
        return
    kwargs = {} if update_fields is None else {"update_fields": update_fields}
    post_save.send(sender=Article, instance=article, created=False, **kwargs)


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        (None, frozenset({"title"}), None),
        (["title"], frozenset({"title"}), None),
        (frozenset({"title"}), ["author"], None),
        (frozenset({"title"}), None, "absent"),
    ],
)
def test_saves_sent_by_hand_merge_to_every_field(
    connect: Connect[Any], first: Any, second: Any, merged: Any
) -> None:
    received: list[Any] = []

    @connect(post_save, sender=Article, coalesce=True)
    def reindex(**kwargs: Any) -> None:
        received.append(kwargs.get("update_fields", "absent"))

    article = Article.objects.create(title="a")
    run_queued()
    received.clear()
    with transaction.atomic():
        _save(article, first)
        _save(article, second)
    run_queued()
    assert received == [merged]


def test_in_autocommit_every_save_is_its_own_call(seen: list[Seen]) -> None:
    article = Article.objects.create(title="a")
    article.save()
    run_queued()
    assert len(seen) == 2


def test_calls_without_a_saved_instance_are_never_merged(
    connect: Connect[Any], numbers: list[int]
) -> None:
    @connect(custom, coalesce=True)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        custom.send(sender=None, n=1)
        custom.send(sender=None, n=1)
    assert len(queued_tasks()) == 4  # two of each receiver


def test_other_receivers_of_the_row_are_not_merged(
    connect: Connect[Any], seen: list[Seen]
) -> None:
    plain = []

    @connect(post_save, sender=Article)
    def each_save(instance: Article, **kwargs: Any) -> None:
        plain.append(instance.title)

    with transaction.atomic():
        article = Article.objects.create(title="a")
        article.save()
    run_queued()
    assert (len(seen), len(plain)) == (1, 2)


def test_a_batch_of_many_rows_saved_three_times_is_a_call_per_row(
    connect: Connect[Any],
) -> None:
    titles: list[str] = []

    @connect(post_save, sender=Article, coalesce=True, batch=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        titles.append(instance.title)

    with transaction.atomic():
        articles = [Article.objects.create(title=f"{n}") for n in range(100)]
        for article in articles:
            article.title += " edited"
            article.save()
        for article in articles:
            article.title += " twice"
            article.save()
    assert len(queued_tasks()) == 1  # one batch
    run_queued()
    assert titles == [f"{n} edited twice" for n in range(100)]


@pytest.mark.outbox
def test_with_the_outbox_a_row_keeps_one_call(connect: Connect[Any]) -> None:
    from django_q_signals.models import OutboxCall

    @connect(post_save, sender=Article, coalesce=True, outbox=True)
    def reindex(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        article = Article.objects.create(title="a")
        article.save()
        with rolled_back():
            article.save()
        with transaction.atomic():
            article.save()
        article.save()
        assert OutboxCall.objects.count() == 1
    assert len(queued_tasks()) == 1
    run_queued()
    assert OutboxCall.objects.count() == 0


@pytest.mark.outbox
def test_coalescing_outbox_rows_sends_no_model_signals(connect: Connect[Any]) -> None:
    from django_q_signals.models import OutboxCall

    @connect(post_save, sender=Article, coalesce=True, outbox=True)
    def reindex(**kwargs: Any) -> None:
        pass

    deleted: list[Any] = []

    def any_delete(sender: Any, **kwargs: Any) -> None:
        deleted.append(sender)

    post_delete.connect(any_delete)  # every model's deletes
    try:
        with transaction.atomic():
            article = Article.objects.create(title="a")
            article.save()
            assert OutboxCall.objects.count() == 1
    finally:
        post_delete.disconnect(any_delete)
    assert deleted == []


def test_a_savepoint_at_the_end_is_not_merged_and_both_calls_run(
    seen: list[Seen],
) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="a")
        with transaction.atomic():
            article.title = "b"
            article.save(update_fields=["title"])
    run_queued()
    # No later call merged them: each ran, none was lost.
    assert seen == [
        ("post_save", "b", True, None),
        ("post_save", "b", False, frozenset({"title"})),
    ]


@pytest.mark.outbox
def test_coalescing_a_newer_savepoint_could_undo_waits(connect: Connect[Any]) -> None:
    from django_q_signals.models import OutboxCall

    ran: list[int] = []

    @connect(post_save, sender=Article, coalesce=True, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        ran.append(instance.pk)

    with transaction.atomic():
        article = Article.objects.create(title="a")
        with transaction.atomic():
            article.save()
        with rolled_back():
            # The two calls above are not coalesced here: the rollback would
            # take the outbox writes back, not the merge.
            Article.objects.create(title="rolled back")
    assert OutboxCall.objects.filter(state="sent").count() == 2
    run_queued()
    assert ran == [article.pk, article.pk]
    assert OutboxCall.objects.count() == 0


@pytest.mark.outbox
def test_without_the_outbox_table_savepoint_calls_still_merge(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q_signals.models import OutboxCall

    ran: list[str] = []

    @connect(post_save, sender=Article, coalesce=True, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        ran.append(instance.title)

    monkeypatch.setattr(OutboxCall._meta, "db_table", "not_migrated_here")
    monkeypatch.setattr(_outbox, "_tables", set())
    monkeypatch.setattr(_outbox, "_missing_told", set())
    with transaction.atomic():
        article = Article.objects.create(title="a")
        with transaction.atomic():
            article.save()
        article.title = "b"
        article.save()
    monkeypatch.undo()
    run_queued()
    assert ran == ["b"]


def test_a_proxy_and_its_model_are_one_row(connect: Connect[Any]) -> None:
    seen: list[str] = []

    @connect(post_save, coalesce=True)
    def reindex(sender: Any, **kwargs: Any) -> None:
        seen.append(sender.__name__)

    with transaction.atomic():
        article = Article.objects.create(title="a")
        ProxyArticle.objects.get(pk=article.pk).save()
    run_queued()
    assert seen == ["ProxyArticle"]


changed = Signal()


def test_only_saves_merge_created_and_update_fields(connect: Connect[Any]) -> None:
    seen: list[dict[str, Any]] = []

    @connect(changed, sender=Article, coalesce=True)
    def handler(**kwargs: Any) -> None:
        seen.append(kwargs)

    article = Article.objects.create(title="a")
    at = datetime(2026, 1, 1)
    with transaction.atomic():
        # A signal of the project's own may mean other things by these names.
        changed.send(sender=Article, instance=article, created=at, update_fields=["a"])
        changed.send(sender=Article, instance=article, created=at, update_fields=["b"])
    run_queued()
    [kwargs] = seen
    assert (kwargs["created"], kwargs["update_fields"]) == (at, ["b"])


def test_coalesce_must_be_true_or_false() -> None:
    with pytest.raises(TypeError, match="coalesce must be True or False"):
        async_receiver(custom, coalesce="yes")  # type: ignore[arg-type]


def test_coalesce_needs_the_commit() -> None:
    with pytest.raises(TypeError, match="cannot be combined with on_commit=False"):
        async_receiver(custom, coalesce=True, on_commit=False)


def test_coalesce_and_snapshot_are_refused_together() -> None:
    with pytest.raises(TypeError, match="Choose one"):
        async_receiver(post_save, sender=Article, coalesce=True, snapshot=True)
