"""0.x's task functions: ``<handler>_task`` on each handler's module, called
with ``(sender_label, instance_label, instance_pk, kwargs)``."""

from __future__ import annotations

import asyncio
import pickle
import pydoc
import sys
from io import StringIO
from typing import Any
from unittest.mock import MagicMock

import pytest
from django.core.management import call_command
from django.db.models.signals import post_delete, post_save

from django_q_signals import checks
from tests import handlers
from tests.conftest import Connect, Worker, custom
from tests.models import Hideable, Note, Seen

this_module = sys.modules[__name__]

# Django 6.1's JSONField check, which manage.py check runs, asks each
# database what it supports.
needs_the_databases = pytest.mark.django_db(databases=["default", "other"])


def task_function(handler: Any) -> Any:
    return getattr(sys.modules[handler.__module__], f"{handler.__name__}_task")


def test_a_module_level_handler_has_a_task_function_on_its_module() -> None:
    function = task_function(handlers.record_note)

    assert (function.__module__, function.__qualname__) == (
        "tests.handlers",
        "record_note_task",
    )
    assert pydoc.locate("tests.handlers.record_note_task") is function
    assert pickle.loads(pickle.dumps(function)) is function


@pytest.mark.django_db
def test_the_task_function_rebuilds_the_sender_and_instance(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Note)
    def handler(sender: Any, instance: Any, **kwargs: Any) -> None:
        received.append((sender, instance, kwargs))

    note = Note.objects.create(title="kept")
    result = task_function(handler)(
        "tests.note", "tests.note", note.pk, {"created": True, "raw": False}
    )

    assert result is None
    [(sender, instance, kwargs)] = received
    assert sender is Note
    assert (type(instance), instance.pk, instance.title) == (Note, note.pk, "kept")
    assert kwargs == {"signal": post_save, "created": True, "raw": False}


@pytest.mark.django_db
def test_the_instance_is_loaded_with_the_base_manager(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Hideable)
    def handler(instance: Any, **kwargs: Any) -> None:
        received.append(instance)

    hidden = Hideable.objects.create(hidden=True)
    task_function(handler)("tests.hideable", "tests.hideable", hidden.pk, {})

    assert [row.pk for row in received] == [hidden.pk]


@pytest.mark.django_db
def test_a_row_that_is_gone_arrives_as_none_with_its_pk(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Note)
    def handler(instance: Any, **kwargs: Any) -> None:
        received.append((instance, kwargs.get("_instance_pk")))

    note = Note.objects.create(title="doomed")
    pk = note.pk
    note.delete()
    task_function(handler)("tests.note", "tests.note", pk, {})

    assert received == [(None, pk)]


@pytest.mark.django_db
def test_update_fields_sent_as_a_list_arrive_as_a_frozenset(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Note)
    def handler(update_fields: Any, **kwargs: Any) -> None:
        received.append(update_fields)

    note = Note.objects.create(title="edited")
    function = task_function(handler)
    function("tests.note", "tests.note", note.pk, {"update_fields": ["title"]})
    function("tests.note", "tests.note", note.pk, {"update_fields": None})

    assert received == [frozenset({"title"}), None]


def test_no_sender_and_no_instance_arrive_as_none(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(sender: Any, instance: Any, **kwargs: Any) -> None:
        received.append((sender, instance, kwargs))

    task_function(handler)(None, None, None, {"n": 3})

    assert received == [(None, None, {"signal": custom, "n": 3})]


@pytest.mark.django_db
def test_an_async_handler_runs_through_its_task_function(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Note)
    async def handler(instance: Any, **kwargs: Any) -> str:
        await asyncio.sleep(0)
        received.append(instance.title)
        return "done"

    note = Note.objects.create(title="awaited")
    result = task_function(handler)("tests.note", "tests.note", note.pk, {})

    assert (received, result) == (["awaited"], "done")


def test_the_signal_is_the_receivers_first(connect: Connect[Any]) -> None:
    received = []

    @connect([post_delete, post_save], sender=Note)
    def handler(signal: Any, **kwargs: Any) -> None:
        received.append(signal)

    task_function(handler)("tests.note", None, None, {})

    assert received == [post_delete]


def test_a_handler_decorated_again_keeps_its_first_task_function(
    connect: Connect[Any],
) -> None:
    received = []

    def handler(signal: Any, **kwargs: Any) -> None:
        received.append(signal)

    connect(post_save, sender=Note)(handler)
    first = task_function(handler)
    connect(custom, dispatch_uid="again")(handler)

    assert task_function(handler) is first
    first(None, None, None, {})
    assert received == [post_save]


def test_a_later_handler_of_the_same_name_takes_over_the_task_function(
    connect: Connect[Any],
) -> None:
    """As when a handler is decorated again after its receiver was
    disconnected (0.3.0's own tests wipe the signals' receivers)."""
    received = []

    def define(mark: str) -> Any:
        @connect(custom)
        def handler(**kwargs: Any) -> None:
            received.append(mark)

        return handler

    custom.disconnect(define("first"))
    later = define("later")
    task_function(later)(None, None, None, {})

    assert received == ["later"]


def test_a_nested_handler_leaves_a_module_level_handlers_task_function(
    connect: Connect[Any],
) -> None:
    module_level = handlers.record_note_task  # type: ignore[attr-defined]

    def record_note(**kwargs: Any) -> None:
        pass

    record_note.__module__ = "tests.handlers"
    connect(custom)(record_note)

    assert handlers.record_note_task is module_level  # type: ignore[attr-defined]


def users_task(*args: Any) -> str:
    return "the user's"


# A function, a value, and what mock.patch() leaves (it answers every attribute).
@pytest.mark.parametrize("taken_task", [users_task, None, MagicMock()])
def test_a_module_attribute_of_that_name_is_never_overwritten(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch, taken_task: Any
) -> None:
    monkeypatch.setattr(this_module, "taken_task", taken_task, raising=False)

    @connect(custom)
    def taken(**kwargs: Any) -> None:
        pass

    assert this_module.taken_task is taken_task

    [message] = checks.check_task_functions()
    assert message.id == "django_q_signals.W003"
    assert message.obj is taken
    assert message.msg.startswith(
        "tests.test_compat.taken_task is defined in its module, so the 0.x task "
        "function of the async receiver tests.test_compat."
    )


@needs_the_databases
@pytest.mark.outbox  # manage.py check runs the app's checks
def test_manage_py_check_reports_w003(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(this_module, "taken_task", users_task, raising=False)

    @connect(custom)
    def taken(**kwargs: Any) -> None:
        pass

    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "(django_q_signals.W003) tests.test_compat.taken_task is defined" in (
        out.getvalue()
    )


def test_no_task_function_for_a_module_that_is_not_loaded(
    connect: Connect[Any],
) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    handler.__module__ = "no_such_module"
    connect(custom)(handler)

    assert "no_such_module" not in sys.modules
    assert checks.check_task_functions() == []


def test_w003_silent_when_every_task_function_is_written() -> None:
    import tests.handlers  # noqa: F401

    assert checks.check_task_functions() == []


def test_tasks_queued_by_0x_run_in_a_worker(worker: Worker) -> None:
    """Tasks as 0.3.0 queued them, before an upgrade: Django Q2's
    ``async_task`` with the dotted path of ``<handler>_task`` and its four
    arguments, run by a worker of this version."""
    from django_q.models import Success
    from django_q.tasks import async_task

    kept = Note.objects.create(title="kept")
    gone = Note.objects.create(title="gone")
    gone_pk = gone.pk
    gone.delete()

    function = "tests.handlers.record_legacy_task"
    async_task(
        function,
        "tests.note",
        "tests.note",
        kept.pk,
        {"created": False, "update_fields": ["title"], "raw": False},
    )
    async_task(
        function,
        "tests.note",
        "tests.note",
        gone_pk,
        {"created": True, "update_fields": None, "raw": False},
    )
    worker.wait_for(lambda: Success.objects.filter(func=function).count() == 2)

    seen = Seen.objects.filter(handler="record_legacy")
    assert sorted(seen.values_list("note_pk", "title", "created")) == sorted(
        [
            (kept.pk, "Note kept frozenset", False),
            (gone_pk, "Note None NoneType", True),
        ]
    )
