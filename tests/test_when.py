"""when= and previous=: deciding in the request whether to queue a call, and
the values a model's fields had before the save."""

from __future__ import annotations

import functools
import pickle
from typing import Any

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.test.utils import CaptureQueriesContext

from django_q_signals import async_receiver, checks
from django_q_signals._registry import all_receivers
from tests.conftest import Connect, custom, queued_tasks, rolled_back, run_queued
from tests.models import Article, Author, Issue, Membership, Price, Slug, Token

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

Seen = list[tuple[str, dict[str, Any]]]


def issue_queries(queries: CaptureQueriesContext) -> list[str]:
    """The kind of each query on the issues' table (the broker's are not)."""
    return [q["sql"].split()[0] for q in queries if "tests_issue" in q["sql"]]


def not_alerted(instance: Issue, **kwargs: Any) -> bool:
    return not instance.alert_sent


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch": True},
        {"coalesce": True},
        pytest.param({"outbox": True}, marks=pytest.mark.outbox),
        {"on_commit": False},
    ],
    ids=["unbatched", "batch", "coalesce", "outbox", "at-once"],
)
def test_a_false_when_queues_nothing(
    connect: Connect[Any], options: dict[str, Any]
) -> None:
    alerted: list[str] = []

    @connect(post_save, sender=Issue, when=not_alerted, **options)
    def alert(instance: Issue, **kwargs: Any) -> None:
        alerted.append(instance.title)

    with transaction.atomic():
        Issue.objects.create(title="sent already", alert_sent=True)
        assert connection.run_on_commit == []
    assert queued_tasks() == []
    if apps.is_installed("django_q_signals"):  # The outbox's table exists.
        from django_q_signals.models import OutboxCall

        assert not OutboxCall.objects.exists()

    Issue.objects.create(title="to send")
    run_queued()
    assert alerted == ["to send"]


def test_when_gets_the_handlers_arguments(connect: Connect[Any]) -> None:
    got: list[dict[str, Any]] = []

    def when(**kwargs: Any) -> bool:
        got.append(kwargs)
        return False

    @connect(post_save, sender=Issue, when=when, previous=["stage"])
    def handler(**kwargs: Any) -> None:
        raise AssertionError("never queued")

    issue = Issue.objects.create(title="a")
    [arguments] = got
    assert arguments == {
        "signal": post_save,
        "sender": Issue,
        "instance": issue,
        "created": True,
        "update_fields": None,
        "raw": False,
        "using": "default",
        "previous": {"stage": None},
    }
    assert arguments["instance"] is issue


def test_when_may_be_a_lambda(connect: Connect[Any]) -> None:
    numbers: list[int] = []

    @connect(custom, when=lambda n, **kwargs: n % 2 == 0)
    def handler(n: int, **kwargs: Any) -> None:
        numbers.append(n)

    for n in range(5):
        custom.send(sender=None, n=n)
    run_queued()
    assert numbers == [0, 2, 4]


def test_an_error_in_when_reaches_the_save(connect: Connect[Any]) -> None:
    def when(**kwargs: Any) -> bool:
        raise ValueError("no stage")

    @connect(post_save, sender=Issue, when=when)
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(ValueError, match="no stage"), transaction.atomic():
        Issue.objects.create(title="a")
    assert not Issue.objects.exists()
    assert queued_tasks() == []


@pytest.fixture
def seen(connect: Connect[Any]) -> Seen:
    """The signal and ``previous`` of each call the handlers ran."""
    received: Seen = []

    @connect(pre_save, sender=Issue, previous=["stage", "assignee"])
    def before(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(("pre_save", previous))

    @connect(post_save, sender=Issue, previous=["stage", "labels"])
    def after(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(("post_save", previous))

    return received


def test_previous_on_a_create_is_none(seen: Seen) -> None:
    Issue.objects.create(title="a", stage="triage")
    run_queued()
    assert seen == [
        ("pre_save", {"stage": None, "assignee": None}),
        ("post_save", {"stage": None, "labels": None}),
    ]


def test_previous_of_a_loaded_instance_costs_no_query(seen: Seen) -> None:
    ada = Author.objects.create(name="Ada")
    pk = Issue.objects.create(title="a", assignee=ada, labels=["x"]).pk
    run_queued()
    seen.clear()
    issue = Issue.objects.get(pk=pk)
    issue.stage = "done"
    issue.assignee = None
    with CaptureQueriesContext(connection) as queries:
        issue.save()
    assert issue_queries(queries) == ["UPDATE"]
    run_queued()
    assert seen == [
        ("pre_save", {"stage": "new", "assignee": ada.pk}),
        ("post_save", {"stage": "new", "labels": ["x"]}),
    ]


def test_previous_of_an_instance_built_by_hand_takes_one_query(seen: Seen) -> None:
    pk = Issue.objects.create(title="a", stage="triage").pk
    run_queued()
    seen.clear()
    with CaptureQueriesContext(connection) as queries:
        Issue(pk=pk, title="a", stage="done").save()
    # One look-up shared by both receivers, then the save's.
    assert issue_queries(queries) == ["SELECT", "UPDATE"]
    run_queued()
    assert seen == [
        ("pre_save", {"stage": "triage", "assignee": None}),
        ("post_save", {"stage": "triage", "labels": []}),
    ]


def test_a_pk_given_by_hand_for_a_new_row(seen: Seen) -> None:
    Issue(pk=1000, title="a", stage="done").save()
    run_queued()
    assert seen == [
        ("pre_save", {"stage": None, "assignee": None}),
        ("post_save", {"stage": None, "labels": None}),
    ]


def test_a_second_save_compares_with_the_first(seen: Seen) -> None:
    issue = Issue.objects.create(title="a")
    for stage in ("triage", "done"):
        issue.stage = stage
        with CaptureQueriesContext(connection) as queries:
            issue.save()
        assert issue_queries(queries) == ["UPDATE"]
    run_queued()
    assert [previous["stage"] for _, previous in seen] == [
        None,
        None,
        "new",
        "new",
        "triage",
        "triage",
    ]


def test_update_fields_keep_the_stored_value_of_the_others(seen: Seen) -> None:
    issue = Issue.objects.create(title="a")
    issue.stage = "done"  # Not saved: the database keeps "new".
    issue.title = "b"
    issue.save(update_fields=["title"])
    issue.save(update_fields=["stage"])
    issue.stage = "closed"
    issue.save(update_fields=["stage"])
    run_queued()
    assert [previous["stage"] for _, previous in seen[2:]] == [
        "new",
        "new",
        "new",
        "new",
        "done",
        "done",
    ]


def test_values_changed_in_place_are_not_previous(seen: Seen) -> None:
    pk = Issue.objects.create(title="a", labels=["x"]).pk
    issue = Issue.objects.get(pk=pk)
    issue.labels.append("y")
    issue.save()
    run_queued()
    assert seen[-1] == ("post_save", {"stage": "new", "labels": ["x"]})


def test_previous_of_a_deferred_field_is_looked_up(seen: Seen) -> None:
    pk = Issue.objects.create(title="a", stage="triage").pk
    run_queued()
    seen.clear()
    issue = Issue.objects.only("title", "assignee").get(pk=pk)
    issue.stage = "done"
    with CaptureQueriesContext(connection) as queries:
        issue.save()
    assert issue_queries(queries) == ["SELECT", "UPDATE"]
    assert "assignee" not in queries[0]["sql"]
    run_queued()
    assert seen == [
        ("pre_save", {"stage": "triage", "assignee": None}),
        ("post_save", {"stage": "triage", "labels": []}),
    ]


def test_a_copy_from_a_pickle_looks_previous_up(seen: Seen) -> None:
    issue = Issue.objects.create(title="a")
    cached = pickle.loads(pickle.dumps(issue))
    Issue.objects.filter(pk=issue.pk).update(stage="triage")
    cached.stage = "done"
    with CaptureQueriesContext(connection) as queries:
        cached.save()
    assert issue_queries(queries) == ["SELECT", "UPDATE"]
    run_queued()
    assert seen[-1] == ("post_save", {"stage": "triage", "labels": []})


def test_a_save_rolled_back_is_not_previous(seen: Seen) -> None:
    issue = Issue.objects.create(title="a")
    with transaction.atomic():
        with rolled_back():
            issue.stage = "triage"
            issue.save()
        issue.stage = "done"
        issue.save()
    with rolled_back():
        issue.stage = "closed"
        issue.save()
    issue.stage = "reopened"
    issue.save()
    run_queued()
    assert [previous["stage"] for name, previous in seen if name == "post_save"] == [
        None,
        "new",  # The savepoint with "triage" was rolled back.
        "done",
    ]


def test_a_save_in_a_transaction_is_previous_in_it(seen: Seen) -> None:
    issue = Issue.objects.create(title="a")
    with transaction.atomic():
        issue.stage = "triage"
        issue.save()
        with transaction.atomic():
            issue.stage = "done"
            with CaptureQueriesContext(connection) as queries:
                issue.save()
        issue.stage = "closed"
        issue.save()
    assert issue_queries(queries) == ["UPDATE"]
    run_queued()
    assert [previous["stage"] for name, previous in seen if name == "post_save"] == [
        None,
        "new",
        "triage",
        "done",
    ]


def test_previous_is_read_on_the_instances_database(seen: Seen) -> None:
    issue = Issue.objects.using("other").create(title="a", stage="elsewhere")
    Issue.objects.create(pk=issue.pk, title="a", stage="here")
    run_queued()
    seen.clear()
    loaded = Issue.objects.using("other").get(pk=issue.pk)
    loaded.stage = "done"
    with CaptureQueriesContext(connections["other"]) as queries:
        loaded.save()
    assert issue_queries(queries) == ["UPDATE"]
    # Written to another database: what that one held.
    loaded.save(using="default")
    Issue(pk=issue.pk, title="a", stage="by hand").save(using="other")
    run_queued()
    assert [previous["stage"] for name, previous in seen if name == "post_save"] == [
        "elsewhere",
        "here",
        "done",
    ]


def test_when_with_previous_queues_only_a_change(connect: Connect[Any]) -> None:
    moved: list[tuple[str, str]] = []

    def stage_changed(instance: Issue, previous: dict[str, Any], **kwargs: Any) -> bool:
        return bool(previous["stage"] != instance.stage)

    @connect(post_save, sender=Issue, previous=["stage"], when=stage_changed)
    def notify(instance: Issue, previous: dict[str, Any], **kwargs: Any) -> None:
        moved.append((previous["stage"], instance.stage))

    issue = Issue.objects.create(title="a")
    run_queued()
    issue.title = "b"
    issue.save()
    assert queued_tasks() == []
    issue.stage = "done"
    issue.save()
    run_queued()
    assert moved == [(None, "new"), ("new", "done")]


def test_coalesced_calls_keep_the_values_before_the_first_save(
    connect: Connect[Any],
) -> None:
    received: list[dict[str, Any]] = []

    @connect(post_save, sender=Issue, coalesce=True, previous=["stage", "labels"])
    def reindex(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    issue = Issue.objects.create(title="a")
    run_queued()
    received.clear()
    with transaction.atomic():
        for stage in ("triage", "done"):
            issue.stage = stage
            issue.labels = [stage]
            issue.save()
    run_queued()
    assert received == [{"stage": "new", "labels": []}]


def test_a_pk_with_a_default_is_a_create_without_a_query(
    connect: Connect[Any],
) -> None:
    received: list[dict[str, Any]] = []

    @connect(pre_save, sender=Token, previous=["label"])
    def handler(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    with CaptureQueriesContext(connection) as queries:
        Token.objects.create(label="a")
    assert [q["sql"].split()[0] for q in queries if "tests_token" in q["sql"]] == [
        "INSERT"
    ]
    run_queued()
    assert received == [{"label": None}]


def test_the_listing_names_when_and_previous(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Issue, when=not_alerted, previous=["stage"])
    def handler(**kwargs: Any) -> None:
        pass

    [receiver] = [r for r in all_receivers() if r.func is handler]
    assert receiver.describe_options()[-2:] == [
        "when=tests.test_when.not_alerted",
        "previous=stage",
    ]


async def async_when(**kwargs: Any) -> bool:
    return True


@pytest.mark.parametrize(
    ("signal", "sender", "options", "error"),
    [
        (post_save, Issue, {"when": True}, "when must be a function"),
        (post_save, Issue, {"when": async_when}, "is an async function"),
        (post_save, Issue, {"previous": "stage"}, "previous must be a list"),
        (post_save, Issue, {"previous": []}, "previous must be a list"),
        (post_save, Issue, {"previous": [1]}, "previous must be a list"),
        (post_delete, Issue, {"previous": ["stage"]}, "not for post_delete"),
        (custom, None, {"previous": ["stage"]}, "not for <"),
        (post_save, None, {"previous": ["stage"]}, "give a model"),
        (post_save, "issue", {"previous": ["stage"]}, "give a model"),
    ],
)
def test_bad_values_are_refused_at_decoration(
    signal: Any, sender: Any, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(TypeError, match=error):
        async_receiver(signal, sender, **options)


@pytest.mark.parametrize(
    ("sender", "fields"),
    [(Issue, ["stage", "state"]), ("tests.Article", ["tags"])],
)
def test_fields_that_are_not_columns_are_refused(
    sender: Any, fields: list[str]
) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(ImproperlyConfigured, match=f"no field '{fields[-1]}'"):
        async_receiver(post_save, sender, previous=fields)(handler)


def test_fields_named_before_the_models_are_ready_are_checked(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(apps, "models_ready", False)

        @connect(post_save, sender="tests.Issue", previous=["stage", "state"])
        def handler(**kwargs: Any) -> None:
            pass

    @connect(post_save, sender=Article, previous=["author_id"])
    def fine(**kwargs: Any) -> None:
        pass

    [message] = checks.check_previous_fields()
    assert message.id == "django_q_signals.E008"
    assert message.obj is handler
    assert "tests.Issue has no field 'state'" in message.msg


def test_previous_is_queued_as_it_is(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Issue, previous=["stage"])
    def handler(**kwargs: Any) -> None:
        pass

    Issue.objects.create(title="a")
    [task] = queued_tasks()
    data = task["args"][0][3]
    assert {"stage": None} in data  # Not pickled: any worker reads it.
    assert isinstance(data[1], int)  # A usual layout, named by its number.


def test_snapshots_of_instances_saved_in_a_transaction(connect: Connect[Any]) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    @connect(post_save, sender=Issue, snapshot=True, previous=["stage"])
    def handler(instance: Issue, previous: dict[str, Any], **kwargs: Any) -> None:
        received.append((instance.stage, previous))

    with transaction.atomic():
        issue = Issue.objects.create(title="a")
        issue.stage = "done"
        issue.save()
    run_queued()
    assert received == [("new", {"stage": None}), ("done", {"stage": "new"})]


def test_a_signal_sent_by_hand_gets_what_the_database_holds(
    connect: Connect[Any],
) -> None:
    received: list[dict[str, Any]] = []

    @connect(post_save, sender=Issue, previous=["stage"])
    def handler(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    pk = Issue.objects.create(title="a", stage="triage").pk
    run_queued()
    received.clear()
    post_save.send(
        sender=Issue,
        instance=Issue(pk=pk, stage="done"),
        created=False,
    )
    run_queued()
    assert received == [{"stage": "triage"}]


def test_the_listing_names_a_when_with_no_name(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Issue, when=functools.partial(not_alerted))
    def handler(**kwargs: Any) -> None:
        pass

    [receiver] = [r for r in all_receivers() if r.func is handler]
    assert receiver.describe_options()[-1].startswith("when=functools.partial(")


def test_previous_of_a_composite_pk_row(connect: Connect[Any]) -> None:
    received: list[dict[str, Any]] = []

    @connect(post_save, sender=Membership, previous=["role"])
    def handler(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    Membership(team="a", person="b", role="reader").save()
    Membership(team="a", person="b", role="editor").save()
    membership = Membership.objects.get(team="a", person="b")
    membership.role = "owner"
    membership.save()
    run_queued()
    assert received == [{"role": None}, {"role": "reader"}, {"role": "editor"}]


def test_values_looked_up_are_as_the_model_reads_them(connect: Connect[Any]) -> None:
    received: list[dict[str, Any]] = []

    @connect(post_save, sender=Issue, previous=["alert_sent", "labels", "assignee"])
    def handler(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    ada = Author.objects.create(name="Ada")
    pk = Issue.objects.create(title="a", alert_sent=True, labels=[1], assignee=ada).pk
    Issue(pk=pk, title="a").save()
    run_queued()
    assert received[-1] == {"alert_sent": True, "labels": [1], "assignee": ada.pk}
    assert type(received[-1]["alert_sent"]) is bool


@pytest.mark.parametrize(
    ("model", "pk", "given"),
    [(Slug, "code", "abc"), (Price, "amount", "1.5")],
)
def test_previous_of_rows_with_their_own_pk(
    connect: Connect[Any], model: Any, pk: str, given: str
) -> None:
    received: list[dict[str, Any]] = []
    field = "title" if model is Slug else "label"

    @connect(post_save, sender=model, previous=[field])
    def handler(previous: dict[str, Any], **kwargs: Any) -> None:
        received.append(previous)

    model.objects.create(**{pk: given, field: "old"})
    model(**{pk: given, field: "new"}).save()
    run_queued()
    assert received == [{field: None}, {field: "old"}]
