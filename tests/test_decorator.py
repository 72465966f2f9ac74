"""The decorator: its options, and how it connects and names handlers."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal
from django.test.utils import CaptureQueriesContext

from django_q_signals import async_receiver
from tests.conftest import Connect, custom, queued_tasks, run_queued
from tests.models import Article, Author, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def test_returns_the_function_unchanged(connect: Connect[Any]) -> None:
    def handler(**kwargs: Any) -> str:
        return "called directly"

    assert connect(custom)(handler) is handler
    assert handler() == "called directly"


def test_fires_with_the_default_weak_true() -> None:
    def register() -> None:
        @async_receiver(custom, dispatch_uid="weak-test")
        def handler(**kwargs: Any) -> None:
            pass

    register()
    gc.collect()
    try:
        custom.send(sender=None)
        assert len(queued_tasks()) == 1
    finally:
        custom.disconnect(dispatch_uid="weak-test")


def test_a_list_of_signals(connect: Connect[Any]) -> None:
    received = []

    @connect([post_save, post_delete], sender=Article)
    def handler(signal: Signal, **kwargs: Any) -> None:
        received.append(signal)

    Article.objects.create(title="a").delete()
    run_queued()
    assert received == [post_save, post_delete]


def test_a_lazy_sender_string(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender="tests.Article")
    def handler(sender: Any, **kwargs: Any) -> None:
        received.append(sender)

    Article.objects.create(title="a")
    Tag.objects.create(name="not this one")
    run_queued()
    assert received == [Article]


def test_disconnect_by_dispatch_uid() -> None:
    @async_receiver(post_save, sender=Article, dispatch_uid="by-uid")
    def handler(**kwargs: Any) -> None:
        pass

    assert post_save.disconnect(sender=Article, dispatch_uid="by-uid") is True
    Article.objects.create(title="a")
    assert queued_tasks() == []


def test_disconnect_by_handler() -> None:
    @async_receiver(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    assert post_save.disconnect(handler, sender=Article) is True
    Article.objects.create(title="a")
    assert queued_tasks() == []


def test_the_same_dispatch_uid_connects_once(connect: Connect[Any]) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    connect(custom, dispatch_uid="once")(handler)
    connect(custom, dispatch_uid="once")(handler)
    custom.send(sender=None)
    assert len(queued_tasks()) == 1


def test_signal_kwarg_is_the_signal_that_fired(connect: Connect[Any]) -> None:
    other = Signal()
    received = []

    @connect([custom, other])
    def handler(signal: Signal, **kwargs: Any) -> None:
        received.append(signal)

    other.send(sender=None)
    custom.send(sender=None)
    run_queued()
    assert received == [other, custom]


def test_default_task_name_and_group_are_the_handler_path(
    connect: Connect[Any],
) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    [task] = queued_tasks()
    path = f"{__name__}.{handler.__qualname__}"
    assert task["name"] == path
    assert task["group"] == path
    assert task["func"] == "django_q_signals.worker.run_call"


def test_q_options_reach_django_q2(connect: Connect[Any]) -> None:
    @connect(custom, q_options={"group": "mail", "timeout": 7, "task_name": "x"})
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    [task] = queued_tasks()
    assert (task["group"], task["timeout"], task["name"]) == ("mail", 7, "x")


def test_signal_kwargs_named_like_q2_options_reach_the_handler(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    custom.send(sender=None, group="admins", timeout=3, hook="h", task_name="t")
    [task] = queued_tasks()
    run_queued()
    assert "timeout" not in task
    assert received[0]["group"] == "admins"
    assert received[0]["timeout"] == 3
    assert received[0]["hook"] == "h"
    assert received[0]["task_name"] == "t"


def test_django_q2_models_never_trigger_receivers(connect: Connect[Any]) -> None:
    from django_q.models import Schedule

    @connect(post_save)
    def handler(**kwargs: Any) -> None:
        pass

    Schedule.objects.create(func="math.floor")
    assert queued_tasks() == []


@pytest.mark.parametrize(
    "sender", ["django_q.Task", "django_q.Success", "django_q_signals.OutboxCall"]
)
def test_a_model_of_django_q2_or_of_the_outbox_as_sender_is_refused(
    sender: str,
) -> None:
    with pytest.raises(ImproperlyConfigured, match="model of Django Q2 or of this"):
        async_receiver(post_save, sender=sender)


def test_a_django_q2_model_class_sender_is_refused() -> None:
    from django_q.models import OrmQ

    with pytest.raises(ImproperlyConfigured, match="forever"):
        async_receiver(post_save, sender=OrmQ)


class Owner:
    def __call__(self, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("func", [Owner(), print], ids=["callable object", "builtin"])
def test_callables_without_a_stable_name_are_refused(func: Any) -> None:
    with pytest.raises(TypeError, match="defined with def"):
        async_receiver(custom)(func)


def test_a_handler_without_kwargs_is_refused() -> None:
    def handler(sender: Any) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"must accept keyword arguments \(\*\*kwargs\)"
    ):
        async_receiver(custom)(handler)


@pytest.mark.parametrize("signal", [None, [], [custom, "post_save"]])
def test_something_else_than_signals_is_refused(signal: Any) -> None:
    with pytest.raises(TypeError, match="takes a Signal"):
        async_receiver(signal)


def test_unknown_q_options_are_refused() -> None:
    with pytest.raises(TypeError, match="Unknown q_options 'retry'"):
        async_receiver(custom, q_options={"retry": 3})


def test_a_misspelt_option_is_refused_with_a_guess() -> None:
    with pytest.raises(TypeError) as error:
        async_receiver(post_save, retry=3)  # type: ignore[arg-type]
    assert str(error.value) == (
        "Unknown async_receiver() option 'retry' (did you mean 'retries'?); the "
        "options are sender, weak, dispatch_uid, on_commit, batch, coalesce, "
        "snapshot, q_options, select_related, prefetch_related, outbox, retries, "
        "retry_backoff, when, previous, ordered, supersede."
    )


def test_every_unknown_option_is_named() -> None:
    with pytest.raises(
        TypeError, match=r"options 'outbx' \(did you mean 'outbox'\?\), 'zzz';"
    ):
        async_receiver(post_save, outbx=True, zzz=1)  # type: ignore[arg-type]


def test_q_options_must_be_a_dict() -> None:
    with pytest.raises(TypeError, match="q_options must be a dict"):
        async_receiver(custom, q_options=[("group", "x")])  # type: ignore[arg-type]


def test_a_lookup_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(TypeError, match="select_related must be a list"):
        async_receiver(custom, select_related="author")


def make_handler(uid: str | None = None) -> Any:
    @async_receiver(custom, dispatch_uid=uid)
    def handler(**kwargs: Any) -> None:
        pass

    return handler


def test_a_disconnected_handler_gives_its_name_to_the_next() -> None:
    custom.disconnect(make_handler())
    second = make_handler()
    try:
        custom.send(sender=None)
        assert len(queued_tasks()) == 1
    finally:
        custom.disconnect(second)


def test_dispatch_uid_tells_handlers_with_one_name_apart() -> None:
    make_handler("one")
    make_handler("two")
    try:
        custom.send(sender=None)
        names = sorted(task["name"] for task in queued_tasks())
        assert names == [
            f"{__name__}.make_handler.<locals>.handler#one",
            f"{__name__}.make_handler.<locals>.handler#two",
        ]
    finally:
        custom.disconnect(dispatch_uid="one")
        custom.disconnect(dispatch_uid="two")


def test_stacked_decorators_run_with_their_own_options(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    @connect(post_delete, sender=Article, snapshot=True)
    @connect(post_save, sender=Article)
    def handler(signal: Signal, instance: Article | None, **kwargs: Any) -> None:
        received.append((signal, instance.title if instance else None))

    Article.objects.create(title="a").delete()
    custom.send(sender=None, instance=None)
    names = [task["name"] for task in queued_tasks()]
    run_queued()

    assert names[1:] == [names[0] + "#2", names[0] + "#3"]
    # The snapshot taken for post_delete still has the title.
    assert received == [(post_save, None), (post_delete, "a"), (custom, None)]


def test_select_and_prefetch_related_are_loaded_with_the_instance(
    connect: Connect[Any],
) -> None:
    received: list[object] = []

    @connect(
        post_save,
        sender=Article,
        select_related=["author"],
        prefetch_related=["tags"],
    )
    def handler(instance: Article, **kwargs: Any) -> None:
        assert instance.author is not None
        with CaptureQueriesContext(connection) as queries:
            received.append(
                (instance.author.name, [t.name for t in instance.tags.all()])
            )
        received.append(len(queries))

    article = Article(title="a", author=Author.objects.create(name="Ada"))
    article.save()
    article.tags.add(Tag.objects.create(name="x"))
    run_queued()
    assert received == [("Ada", ["x"]), 0]


def test_an_async_handler_reads_relations_loaded_for_it(connect: Connect[Any]) -> None:
    received = []

    @connect(
        post_save, sender=Article, select_related=["author"], prefetch_related=["tags"]
    )
    async def handler(instance: Article, **kwargs: Any) -> None:
        assert instance.author is not None
        received.append((instance.author.name, [t.name for t in instance.tags.all()]))

    article = Article(title="a", author=Author.objects.create(name="Ada"))
    article.save()
    article.tags.add(Tag.objects.create(name="x"))
    run_queued()
    assert received == [("Ada", ["x"])]


@pytest.mark.parametrize("sender", [None, "articles", Signal])
def test_relations_without_a_model_sender_are_refused(sender: Any) -> None:
    with pytest.raises(TypeError, match="apply to the sender's model"):
        async_receiver(custom, sender, select_related=["author"])


@pytest.mark.parametrize("batch", [False, True])
def test_relations_are_left_out_for_the_other_side_of_an_m2m(
    connect: Connect[Any], batch: bool
) -> None:
    from django.db.models.signals import m2m_changed

    received = []

    @connect(
        m2m_changed,
        sender=Article.tags.through,
        batch=batch,
        select_related=["author"],
        prefetch_related=["tags"],
    )
    def handler(instance: Article | Tag, action: str, **kwargs: Any) -> None:
        if action == "post_add":
            received.append(type(instance).__name__)

    article = Article.objects.create(title="a", author=Author.objects.create(name="A"))
    tag = Tag.objects.create(name="t")
    with transaction.atomic():
        article.tags.add(tag)
        tag.article_set.add(Article.objects.create(title="b"))
    run_queued()
    assert received == ["Article", "Tag"]


@pytest.mark.parametrize("name", ["pre_enqueue", "pre_execute", "post_execute"])
def test_django_q2s_own_signals_are_refused(name: str) -> None:
    from django_q import signals

    with pytest.raises(ImproperlyConfigured, match="for every task, forever"):
        async_receiver(getattr(signals, name))


def test_relations_of_a_through_model_as_a_plain_sender_are_its_own(
    connect: Connect[Any],
) -> None:
    """Not an m2m_changed receiver: the relations are the Loan's."""
    from django_q_signals import checks
    from tests.models import Loan, Note, Reader

    loaded = []

    @connect(post_save, sender=Loan, select_related=["reader", "note"])
    def loaned(instance: Loan, **kwargs: Any) -> None:
        loaded.append(set(instance._state.fields_cache))

    assert checks.check_relation_lookups() == []
    reader = Reader.objects.create(name="r")
    Loan.objects.create(reader=reader, note=Note.objects.create(title="n"))
    run_queued()
    assert loaded == [{"reader", "note"}]
