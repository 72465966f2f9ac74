"""What a handler receives in the worker, kwarg by kwarg."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.test.utils import CaptureQueriesContext

from django_q_signals.worker import run_call
from tests.conftest import Connect, custom, queued_tasks, run_queued
from tests.models import Article, Author, Membership, Slug, Tag, Token

# Real commits: every signal is queued the way it is in production.
pytestmark = pytest.mark.django_db(transaction=True)

UTC = datetime.timezone.utc


def test_instance_is_reloaded_from_the_database(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance)

    article = Article.objects.create(title="draft")
    Article.objects.filter(pk=article.pk).update(title="published")
    run_queued()

    assert received[0] is not article
    assert received[0].pk == article.pk
    assert received[0].title == "published"


def test_post_save_kwargs_arrive(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    article = Article.objects.create(title="a")
    article.save(update_fields=["title"])
    run_queued()

    assert [k["created"] for k in received] == [True, False]
    assert received[0]["update_fields"] is None
    assert received[1]["update_fields"] == frozenset({"title"})
    assert type(received[1]["update_fields"]) is frozenset
    assert received[1]["signal"] is post_save
    assert received[1]["sender"] is Article
    assert received[1]["raw"] is False
    assert received[1]["using"] == "default"


def test_instances_in_any_kwarg_are_reloaded(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(author: Author, article: Article, **kwargs: Any) -> None:
        received.append((author, article))

    author = Author.objects.create(name="Ada")
    article = Article.objects.create(title="On engines", author=author)
    custom.send(sender=None, author=author, article=article)
    Author.objects.filter(pk=author.pk).update(name="Ada Lovelace")
    run_queued()

    [(got_author, got_article)] = received
    assert got_author.name == "Ada Lovelace"
    assert got_article.title == "On engines"


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_reload_uses_the_alias_the_instance_came_from(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Tag)
    def handler(instance: Tag, using: str, **kwargs: Any) -> None:
        received.append((instance, using, instance._state.db))

    Tag.objects.using("other").create(pk=7, name="on other")
    Tag.objects.using("default").create(pk=7, name="on default")
    run_queued()

    assert [(t.name, using, db) for t, using, db in received] == [
        ("on other", "other", "other"),
        ("on default", "default", "default"),
    ]


def test_row_gone_gives_none_and_the_pk(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    article = Article.objects.create(title="short-lived")
    pk = article.pk
    article.delete()
    run_queued()

    assert received[0]["instance"] is None
    assert received[0]["_instance_pk"] == pk


def test_any_kwarg_gone_gives_its_own_pk(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    author = Author.objects.create(name="gone")
    custom.send(sender=None, user=author)
    Author.objects.all().delete()
    run_queued()

    assert received[0]["user"] is None
    assert received[0]["_user_pk"] == author.pk


def test_deleted_instance_pk_is_captured_when_the_signal_fires(
    connect: Connect[Any], django_capture_on_commit_callbacks: Any
) -> None:
    received = []

    @connect(post_delete, sender=Article)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    article = Article.objects.create(title="doomed")
    pk = article.pk
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        article.delete()
    run_queued()

    assert received[0]["instance"] is None
    assert received[0]["_instance_pk"] == pk
    assert article.pk is None  # what Django leaves behind by the commit


def test_unsaved_instance_arrives_as_it_was(connect: Connect[Any]) -> None:
    received = []

    @connect(pre_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance)

    Article.objects.create(title="new")
    run_queued()

    unsaved = received[0]
    assert (unsaved.title, unsaved._state.adding) == ("new", True)
    assert unsaved.pk is None


def test_an_unsaved_instance_with_a_pk_arrives_as_it_was(connect: Connect[Any]) -> None:
    """A UUID default sets the pk before the first save: still unsaved."""
    received = []

    @connect(pre_save, sender=Token)
    def handler(instance: Token, **kwargs: Any) -> None:
        received.append((instance.label, instance._state.adding))

    token = Token.objects.create(label="first")
    token.label = "second"
    token.save()
    Token.objects.filter(pk=token.pk).update(label="third")
    run_queued()

    # The second save's instance is a saved row: it is loaded again.
    assert received == [("first", True), ("third", False)]


@pytest.mark.parametrize(
    ("model", "fields", "as_string"),
    [
        (Article, {"title": "b"}, str),
        (Slug, {"title": "b"}, None),
    ],
)
def test_a_pk_given_as_another_type_finds_its_row(
    connect: Connect[Any],
    model: type[Article | Slug],
    fields: dict[str, str],
    as_string: Any,
) -> None:
    """CSV and JSON imports give pks as strings; a str pk as an int."""
    received: list[Any] = []

    @connect(post_save, sender=model)
    def handler(instance: Any, **kwargs: Any) -> None:
        received.append(instance)

    if model is Slug:
        existing: Any = Slug.objects.create(code="42", title="a")
        given: Any = 42
    else:
        existing = model.objects.create(**{next(iter(fields)): "a"})
        given = as_string(existing.pk)
    run_queued()
    received.clear()
    model(pk=given, **fields).save()
    run_queued()

    [instance] = received
    assert instance is not None
    assert instance.pk == existing.pk
    assert getattr(instance, next(iter(fields))) == "b"


# MySQL's and MariaDB's default collations compare text without case, and
# pad it with spaces: "ABC" and "abc " are the row "abc" there.
mysql_collations = pytest.mark.skipif(
    connection.vendor != "mysql",
    reason="other backends compare text pks exactly, case and spaces included",
)


@mysql_collations
def test_a_save_through_a_pk_in_another_case_finds_its_row(
    connect: Connect[Any],
) -> None:
    Slug.objects.create(code="abc", title="old")
    received: list[tuple[str, str] | None] = []

    @connect(post_save, sender=Slug)
    def handler(instance: Slug | None, **kwargs: Any) -> None:
        received.append((instance.pk, instance.title) if instance else None)

    # An UPDATE of the row "abc": the signal's instance has the pk "ABC".
    Slug(code="ABC", title="new").save()
    assert Slug.objects.get().pk == "abc"
    [task] = queued_tasks()
    with CaptureQueriesContext(connection) as queries:
        run_call(*task["args"])

    assert len(queries) == 1  # the row's, as for any other pk

    assert received == [("abc", "new")]


@mysql_collations
def test_a_batch_finds_rows_as_the_database_compares_their_pks(
    connect: Connect[Any],
) -> None:
    for code in ("abc", "def", "gone"):
        Slug.objects.create(code=code, title="old")
    received: list[tuple[str, str] | None] = []

    @connect(post_save, sender=Slug, batch=True)
    def handler(instance: Slug | None, **kwargs: Any) -> None:
        received.append((instance.pk, instance.title) if instance else None)

    with transaction.atomic():
        Slug(code="ABC", title="upper").save()
        Slug(code="def ", title="padded").save()
        gone = Slug.objects.get(code="gone")
        gone.save()
        gone.delete()
    run_queued()
    with transaction.atomic():
        # One batch asks for "abc" and "ABC": each finds the row.
        Slug.objects.get(code="abc").save()
        Slug(code="ABC", title="again").save()
    run_queued()

    assert received == [
        ("abc", "upper"),
        ("def", "padded"),
        None,
        ("abc", "again"),
        ("abc", "again"),
    ]


def test_a_string_uuid_pk_of_a_new_row_finds_it(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Token)
    def handler(instance: Token | None, **kwargs: Any) -> None:
        received.append(instance)

    Token.objects.create(id=str(uuid.uuid4()), label="imported")
    run_queued()

    assert [token.label for token in received if token] == ["imported"]


def test_a_using_that_is_not_a_database_is_passed_on(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(using: str, **kwargs: Any) -> None:
        received.append(using)

    with transaction.atomic():
        custom.send(sender=None, using="sms")
        assert queued_tasks() == []
    run_queued()

    assert received == ["sms"]


def test_snapshot_passes_the_instance_as_it_was(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article, snapshot=True)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance)

    article = Article.objects.create(title="first")
    article.title = "changed in memory"
    Article.objects.filter(pk=article.pk).update(title="changed in the database")
    run_queued()

    assert received[0].pk == article.pk
    assert received[0].title == "first"


def test_m2m_changed_keeps_pk_set_and_model(connect: Connect[Any]) -> None:
    received = []

    @connect(m2m_changed, sender=Article.tags.through)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    article = Article.objects.create(title="tagged")
    tags = [Tag.objects.create(name=n) for n in ("a", "b")]
    run_queued()
    article.tags.add(*tags)
    run_queued()

    pre, post = received
    assert (pre["action"], post["action"]) == ("pre_add", "post_add")
    assert post["pk_set"] == {t.pk for t in tags}
    assert type(post["pk_set"]) is set
    assert post["model"] is Tag
    assert post["sender"] is Article.tags.through
    assert post["instance"].title == "tagged"
    assert post["reverse"] is False


def test_plain_values_keep_their_type_and_value(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    values = {
        "a_set": {1, 2},
        "a_frozenset": frozenset({"x"}),
        "a_tuple": (1, "two"),
        "a_list": [1, [2]],
        "a_dict": {"k": [1]},
        "a_str": "text",
        "an_int": 3,
        "a_float": 1.5,
        "a_bool": True,
        "a_none": None,
        "a_datetime": datetime.datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc
        ),
        "a_date": datetime.date(2026, 1, 2),
        "a_decimal": decimal.Decimal("12.30"),
        "a_uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    custom.send(sender=None, **values)
    run_queued()

    got = {k: v for k, v in received[0].items() if k not in ("signal", "sender")}
    assert got == values
    assert {k: type(v) for k, v in got.items()} == {
        k: type(v) for k, v in values.items()
    }
    assert str(got["a_decimal"]) == "12.30"


class Plain:
    pass


@pytest.mark.parametrize("sender", ["a string", Plain, None])
def test_non_model_senders_arrive_as_sent(connect: Connect[Any], sender: Any) -> None:
    received = []

    @connect(custom)
    def handler(sender: Any, **kwargs: Any) -> None:
        received.append(sender)

    custom.send(sender=sender)
    run_queued()

    assert received == [sender]


def test_a_string_sender_that_reads_like_a_label_arrives_as_sent(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(custom)
    def handler(sender: Any, instance: Article, **kwargs: Any) -> None:
        received.append((sender, instance))

    article = Article.objects.create(title="a")
    custom.send(sender="tests.Article", instance=article)
    run_queued()

    assert received == [("tests.Article", article)]


@pytest.mark.parametrize("name", ["weather.today", "a.b.c"])
def test_a_string_sender_that_names_no_model_arrives_as_sent(
    connect: Connect[Any], name: str
) -> None:
    received = []

    @connect(custom, sender=name)
    def handler(sender: Any, **kwargs: Any) -> None:
        received.append(sender)

    custom.send(sender=name)
    run_queued()
    assert received == [name]


class Local(datetime.tzinfo):
    """A time zone defined where pickle cannot find it."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(hours=1)

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(0)


def test_a_datetime_whose_time_zone_cannot_be_pickled_is_left_out_alone(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    local = type("Local", (Local,), {"__qualname__": "nowhere.Local"})()
    when = datetime.datetime(2026, 1, 1, tzinfo=local)
    in_utc = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    custom.send(sender=None, when=when, also=in_utc)
    run_queued()

    [kwargs] = received
    assert "when" not in kwargs
    assert kwargs["also"] == in_utc
    assert "'when' cannot be pickled" in caplog.text


def test_model_class_sender_arrives_as_the_class(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(sender: Any, model: Any, **kwargs: Any) -> None:
        received.append((sender, model))

    custom.send(sender=Article, model=Tag)
    tasks = queued_tasks()
    run_queued()

    assert received == [(Article, Tag)]
    # Sent by their labels, not pickled.
    assert "'tests.Article', 'tests.Tag'" in repr(tasks[0]["args"][0])


def test_async_handler_runs(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Article)
    async def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance.title)

    Article.objects.create(title="async")
    run_queued()

    assert received == ["async"]


def test_a_saved_instance_without_a_pk_arrives_as_it_was(connect: Connect[Any]) -> None:
    """A deleted instance (Django sets its pk to None) has no row to load."""
    received: list[tuple[str, int | None]] = []

    @connect(custom)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append((instance.title, instance.pk))

    article = Article.objects.create(title="gone")
    article.delete()
    custom.send(sender=None, instance=article)
    run_queued()

    assert received == [("gone", None)]


def test_a_composite_pk_with_a_part_missing_arrives_as_it_was(
    connect: Connect[Any],
) -> None:
    received: list[tuple[str, str | None]] = []

    @connect(custom)
    def handler(member: Membership, **kwargs: Any) -> None:
        received.append((member.team, member.person))

    member = Membership.objects.create(team="a", person="b", role="c")
    member.person = None  # type: ignore[assignment]
    custom.send(sender=None, member=member)
    run_queued()

    assert received == [("a", None)]


def test_a_pk_no_row_can_have_gives_none(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(instance: Article | None, _instance_pk: Any, **kwargs: Any) -> None:
        received.append((instance, _instance_pk))

    article = Article.objects.create(title="a")
    article.pk = "not a number"
    custom.send(sender=None, instance=article)
    run_queued()

    assert received == [(None, "not a number")]


def test_an_async_handler_reading_a_relation_not_loaded_is_told_how(
    connect: Connect[Any],
) -> None:
    from django.core.exceptions import SynchronousOnlyOperation

    @connect(post_save, sender=Article)
    async def handler(instance: Article, **kwargs: Any) -> None:
        assert instance.author is not None

    Article.objects.create(title="a", author=Author.objects.create(name="A"))
    with pytest.raises(SynchronousOnlyOperation, match=r"select_related=\[\.\.\.\]"):
        run_queued()
