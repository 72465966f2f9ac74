"""``manage.py qsignals``: the receivers it lists and the task results it counts."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import re
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from importlib.machinery import EXTENSION_SUFFIXES
from io import StringIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth.signals import user_logged_in
from django.core.management import CommandError, call_command
from django.core.signals import request_finished, setting_changed
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal
from django.test import override_settings

from django_q_signals import _brokers, _history, _registry
from django_q_signals._cli import outbox_stats
from django_q_signals._send import BATCH_TASK, TASK
from django_q_signals.worker import run_call
from tests.conftest import Connect, Worker, custom, path, purge, queued_tasks
from tests.handlers import probe_fails, probe_succeeds, stats_probe
from tests.models import Article

NOON = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def qsignals(*args: str) -> str:
    out = StringIO()
    call_command("qsignals", *args, stdout=out)
    return out.getvalue()


def blocks(output: str) -> dict[str, dict[str, str]]:
    """Each receiver's ``label: value`` lines, by the handler path heading them."""
    found = {}
    for block in output.strip("\n").split("\n\n"):
        heading, *lines = block.splitlines()
        pairs = (line.partition(":") for line in lines)
        found[heading] = {label.strip(): value.strip() for label, _, value in pairs}
    return found


def save_task(
    name: str,
    *,
    success: bool,
    stopped: datetime = NOON,
    result: Any = None,
    func: str = TASK,
) -> None:
    """A task result, saved as a Django Q2 worker saves it."""
    from django_q.models import Task

    Task.objects.create(
        id=uuid.uuid4().hex,
        name=name,
        func=func,
        started=stopped - timedelta(seconds=1),
        stopped=stopped,
        success=success,
        result=result,
        group=name,
    )


def failure(message: str) -> str:
    """A failure's result, as Django Q2 records an exception."""
    return (
        f"{message} : Traceback (most recent call last):\n"
        '  File "handler.py", line 1, in handler\n'
        f"ValueError: {message}\n"
    )


# Listing


def test_lists_a_receiver_as_a_block_of_signal_sender_and_options(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    key = path(handler)
    assert (
        f"{key}\n"
        "    signal:        django.db.models.signals.post_save\n"
        "    sender:        tests.Article\n"
        "    options:       on_commit=True (default)\n"
        f"    q_options:     task_name='{key}', group='{key}'\n"
        "\n"
    ) in qsignals()


def test_names_a_lazy_string_sender_as_given(connect: Connect[Any]) -> None:
    @connect(post_save, sender="tests.Article")
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["sender"] == "tests.Article"


def test_names_no_sender_any(connect: Connect[Any]) -> None:
    @connect(post_save)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["sender"] == "any"


def test_names_another_sender_by_its_repr(connect: Connect[Any]) -> None:
    class Sender:
        def __repr__(self) -> str:
            return "<the sender>"

    @connect(custom, sender=Sender())
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["sender"] == "<the sender>"


def test_lists_every_signal_of_a_list(connect: Connect[Any]) -> None:
    @connect([post_save, post_delete], sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signals"] == (
        "django.db.models.signals.post_save, django.db.models.signals.post_delete"
    )


def test_names_a_custom_signal_where_it_is_defined(connect: Connect[Any]) -> None:
    # Defined in tests.conftest, imported by this module.
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == "tests.conftest.custom"


def test_names_a_signal_reached_through_its_module(connect: Connect[Any]) -> None:
    from tests.events import accounts

    @connect(accounts.account_created)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == (
        "tests.events.accounts.account_created"
    )


def test_names_a_signal_where_it_is_defined_not_where_it_is_re_exported(
    connect: Connect[Any],
) -> None:
    from tests.events import account_closed
    from tests.events.web import signals

    # Held by the package, by a deeper module of the project, and by the
    # module that defines it, under an annotated assignment.
    assert signals.account_closed is account_closed

    @connect(account_closed)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == (
        "tests.events.accounts.account_closed"
    )


def test_names_a_signal_by_its_defining_name_not_an_alias(
    connect: Connect[Any],
) -> None:
    from tests.events.web import signals

    @connect(signals.opened)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == (
        "tests.events.accounts.account_created"
    )


@pytest.mark.parametrize(
    "file",
    [
        None,  # built at run time
        f"/site-packages/tests/sourceless{EXTENSION_SUFFIXES[0]}",
        "/site-packages/tests/sourceless.pyc",
    ],
)
def test_names_a_signal_after_a_module_with_no_source_over_one_that_imports_it(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch, file: str | None
) -> None:
    from tests.events.web import signals

    built = Signal()
    # With no source to read, the module may be the one defining it.
    sourceless = ModuleType("tests.sourceless")
    if file:
        sourceless.__file__ = file
    sourceless.built = built  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests.sourceless", sourceless)
    # Its source shows that this module did not.
    monkeypatch.setattr(signals, "built", built, raising=False)

    @connect(built)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == "tests.sourceless.built"


def test_names_a_signal_no_module_defines_after_the_deepest_module_holding_it(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests
    from tests.events.web import signals

    late = Signal()
    monkeypatch.setattr(tests, "late", late, raising=False)
    monkeypatch.setattr(signals, "late", late, raising=False)

    @connect(late)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == (
        "tests.events.web.signals.late"
    )


@pytest.mark.parametrize(
    ("signal", "name"),
    [
        (post_save, "django.db.models.signals.post_save"),
        (request_finished, "django.core.signals.request_finished"),
        (setting_changed, "django.core.signals.setting_changed"),
        (user_logged_in, "django.contrib.auth.signals.user_logged_in"),
    ],
)
def test_names_a_django_signal_where_django_defines_it(
    connect: Connect[Any], signal: Signal, name: str
) -> None:
    from django_q import signals

    # Imported elsewhere too, under the same name.
    assert signals.post_save is post_save

    @connect(signal)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == name


def test_names_a_signal_whose_module_changed_since_it_was_imported(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.events.web import signals

    changed = tmp_path / "changed.py"
    changed.write_text("from django.dispatch import Signal\n\nsaved = Signal()\n")
    spec = importlib.util.spec_from_file_location("changed", changed)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "changed", module)
    monkeypatch.setattr(signals, "saved", module.saved, raising=False)
    changed.write_text("saved = (\n")

    @connect(module.saved)
    def handler(**kwargs: Any) -> None:
        pass

    # Its source no longer shows what it defines: it may be the module.
    assert blocks(qsignals())[path(handler)]["signal"] == "changed.saved"


def test_leaves_a_lazily_imported_module_unloaded(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.find_spec("tests.events.unloaded")
    assert spec
    assert spec.loader
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tests.events.unloaded", module)
    spec.loader.exec_module(module)

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == "tests.conftest.custom"
    assert "loaded" not in object.__getattribute__(module, "__dict__")


def test_names_a_signal_no_module_holds_as_unnamed(connect: Connect[Any]) -> None:
    unnamed = Signal()

    @connect(unnamed)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["signal"] == (
        f"an unnamed signal ({unnamed!r})"
    )


def test_names_each_signal_of_several_receivers(connect: Connect[Any]) -> None:
    from tests.events import accounts

    @connect([accounts.account_created, post_save])
    def first(**kwargs: Any) -> None:
        pass

    @connect(accounts.account_created)
    def second(**kwargs: Any) -> None:
        pass

    shown = blocks(qsignals())
    assert shown[path(first)]["signals"] == (
        "tests.events.accounts.account_created, django.db.models.signals.post_save"
    )
    assert shown[path(second)]["signal"] == "tests.events.accounts.account_created"


def test_shows_the_options_that_are_set(connect: Connect[Any]) -> None:
    @connect(
        post_save,
        sender=Article,
        on_commit=False,
        batch=20,
        snapshot=True,
        select_related=["author"],
        prefetch_related=["tags", "author__article_set"],
        q_options={"task_name": "articles", "timeout": 60},
    )
    def handler(**kwargs: Any) -> None:
        pass

    shown = blocks(qsignals())[path(handler)]
    assert shown["options"] == (
        "on_commit=False, batch=20, snapshot=True, select_related=author, "
        "prefetch_related=tags,author__article_set"
    )
    # A batch's failures are acknowledged, so it is never run again whole.
    assert shown["q_options"] == (
        f"task_name='articles', group='{path(handler)}', timeout=60, ack_failure=True"
    )


def test_shows_every_option_set(connect: Connect[Any]) -> None:
    # All but snapshot, which coalesce refuses (the test above shows it).
    @connect(
        post_save,
        sender=Article,
        batch=20,
        select_related=["author"],
        prefetch_related=["tags"],
        outbox=True,
        coalesce=True,
        retries=3,
        retry_backoff=30,
        q_options={"timeout": 60},
    )
    def handler(**kwargs: Any) -> None:
        pass

    shown = blocks(qsignals())[path(handler)]
    assert shown["options"] == (
        "on_commit=True (default), batch=20, select_related=author, "
        "prefetch_related=tags, outbox=True, coalesce=True, retries=3, "
        "retry_backoff=30"
    )
    assert "timeout=60" in shown["q_options"]


def test_every_receiver_option_is_described() -> None:
    """A new option of Receiver must say where its default comes from, or
    the listing cannot show it."""
    options = {
        option.name
        for option in dataclasses.fields(_registry.Receiver)
        if option.name not in _registry.IDENTITY_FIELDS
        and not option.name.startswith("_")
    }
    assert options == set(_registry.OPTION_SETTINGS)


@override_settings(Q_SIGNALS={"OUTBOX": True})
def test_shows_the_outbox_from_settings(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["options"] == (
        "on_commit=True (default), outbox=True (from Q_SIGNALS['OUTBOX'])"
    )


@override_settings(Q_SIGNALS={"BATCH_SIZE": 50})
def test_shows_the_batch_size_from_settings(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Article, on_commit=True, batch=True)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["options"] == (
        "on_commit=True, batch=True (50 calls per task, from Q_SIGNALS['BATCH_SIZE'])"
    )


@override_settings(Q_SIGNALS={"ON_COMMIT": False})
def test_shows_on_commit_from_settings(connect: Connect[Any]) -> None:
    @connect(post_save, sender=Article)
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["options"] == (
        "on_commit=False (from Q_SIGNALS['ON_COMMIT'])"
    )


@override_settings(Q_SIGNALS={"Q_OPTIONS": {"timeout": 90, "group": "signals"}})
def test_shows_q_options_from_settings_under_the_receivers(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, q_options={"timeout": 30})
    def handler(**kwargs: Any) -> None:
        pass

    assert blocks(qsignals())[path(handler)]["q_options"] == (
        f"task_name='{path(handler)}', group='signals', timeout=30"
    )


def test_lists_receivers_sorted_by_handler_path(connect: Connect[Any]) -> None:
    def second(**kwargs: Any) -> None:
        pass

    def first(**kwargs: Any) -> None:
        pass

    connect(custom)(second)
    connect(custom)(first)

    listed = list(blocks(qsignals()))
    assert listed.index(path(first)) < listed.index(path(second))
    assert listed == sorted(listed)


def test_leaves_out_disconnected_receivers(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    custom.disconnect(handler)

    assert path(handler) not in qsignals()


def test_says_when_no_receiver_is_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_registry", {})

    assert qsignals() == (
        "No async receivers are connected. A receiver is connected when the "
        "module defining it is imported: import it in your AppConfig.ready(), "
        "e.g. `from . import signals`.\n"
    )


# --stats


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_counts_each_receivers_successes_and_failures(
    connect: Connect[Any],
) -> None:
    @connect(custom)
    def busy(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def idle(**kwargs: Any) -> None:
        pass

    for _ in range(3):
        save_task(path(busy), success=True)
    save_task(path(busy), success=False, result=failure("no"))
    # Another function's task under the same name is not the receiver's.
    save_task(path(busy), success=True, func="tests.tasks.other")

    shown = blocks(qsignals("--stats"))
    assert shown[path(busy)]["tasks"] == "3 succeeded, 1 failed"
    assert shown[path(idle)]["tasks"] == "0 succeeded, 0 failed"
    assert "last failure" not in shown[path(idle)]


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_says_a_batch_task_counts_once(connect: Connect[Any]) -> None:
    @connect(custom, batch=10)
    def handler(**kwargs: Any) -> None:
        pass

    save_task(path(handler), success=True, func=BATCH_TASK, result=10)

    assert blocks(qsignals("--stats"))[path(handler)]["tasks"] == (
        "1 succeeded, 0 failed (a batch task counts once, however many calls it held)"
    )


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_show_the_last_failure_by_time(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    later = NOON + timedelta(minutes=5)
    save_task(path(handler), success=False, stopped=later, result=failure("later"))
    save_task(path(handler), success=False, stopped=NOON, result=failure("earlier"))

    assert blocks(qsignals("--stats"))[path(handler)]["last failure"] == (
        "2025-03-01 12:05:00+00:00  later"
    )


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_show_the_first_line_of_a_failure(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    save_task(path(handler), success=False, result=failure("first line\nsecond"))

    assert blocks(qsignals("--stats"))[path(handler)]["last failure"] == (
        "2025-03-01 12:00:00+00:00  first line"
    )


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_shorten_a_long_failure(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    save_task(path(handler), success=False, result=failure("x" * 300))

    shown = blocks(qsignals("--stats"))[path(handler)]["last failure"]
    assert shown == "2025-03-01 12:00:00+00:00  " + "x" * 197 + "..."


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_take_one_query_and_one_per_receiver_with_failures(
    connect: Connect[Any],
    django_assert_num_queries: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # These receivers only, none with an outbox.
    monkeypatch.setattr(_registry, "_registry", {})

    @connect(custom)
    def failing(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def failing_too(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def succeeding(**kwargs: Any) -> None:
        pass

    save_task(path(failing), success=False, result=failure("no"))
    save_task(path(failing_too), success=False, result=failure("no"))
    save_task(path(succeeding), success=True)

    # And, on the ORM broker, one for the tasks waiting in its queue.
    with django_assert_num_queries(4 if _brokers.is_orm(None) else 3):
        qsignals("--stats")


@pytest.mark.django_db(databases=["default", "other"])
@pytest.mark.parametrize("batch", [False, True])
def test_stats_count_tasks_resubmitted_under_another_name(
    connect: Connect[Any], batch: bool
) -> None:
    """Django Q2's admin resubmits a task under a new, random name."""
    from django_q.models import Task

    @connect(custom, on_commit=False, batch=batch)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    [task] = queued_tasks()
    save_task(path(handler), success=False, result=failure("first try"))
    later = NOON + timedelta(hours=1)
    save_task(
        "seven-eleven-romeo-x", success=False, stopped=later, result=failure("again")
    )
    Task.objects.filter(name="seven-eleven-romeo-x").update(args=task["args"])
    save_task("unrelated-random-name", success=True)

    shown = blocks(qsignals("--stats"))[path(handler)]
    shown["tasks"] = shown["tasks"].partition(" (")[0]
    assert shown["tasks"] == "0 succeeded, 2 failed"
    assert shown["last failure"] == "2025-03-01 13:00:00+00:00  again"


@pytest.mark.django_db(databases=["default", "other"])
@pytest.mark.parametrize(
    ("limit", "per", "note"),
    [
        (0, None, "Django Q2 keeps every task (Q_CLUSTER['save_limit'] is 0)."),
        (
            250,
            None,
            (
                "Django Q2 keeps only the last 250 successful tasks "
                "(Q_CLUSTER['save_limit']): older successes are not counted."
            ),
        ),
        (
            10,
            "name",
            (
                "Django Q2 keeps only the last 10 successful tasks per name "
                "(Q_CLUSTER['save_limit']): older successes are not counted."
            ),
        ),
        (
            -1,
            None,
            (
                "Django Q2 saves no successful tasks (Q_CLUSTER['save_limit'] is "
                "below 0): only failures are counted."
            ),
        ),
    ],
)
def test_stats_end_with_what_django_q2_keeps(
    connect: Connect[Any],
    monkeypatch: pytest.MonkeyPatch,
    limit: int,
    per: str | None,
    note: str,
) -> None:
    from django_q.conf import Conf

    # Django Q2 reads Q_CLUSTER once, when django_q.conf is imported.
    monkeypatch.setattr(Conf, "SAVE_LIMIT", limit)
    monkeypatch.setattr(Conf, "SAVE_LIMIT_PER", per)

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    assert qsignals("--stats").endswith(f"\n\n{note}\n")


def test_stats_need_django_q_installed() -> None:
    apps = ["django.contrib.contenttypes", "django_q_signals", "tests"]
    with override_settings(INSTALLED_APPS=apps), pytest.raises(CommandError) as error:
        qsignals("--stats")
    assert str(error.value) == (
        "--stats reads the task results Django Q2 saves, but 'django_q' is not "
        "in INSTALLED_APPS."
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_stats_count_what_a_real_worker_ran(worker: Worker) -> None:
    from django_q.models import Task

    names = [path(probe_succeeds), path(probe_fails)]
    stats_probe.send(sender=None)
    worker.wait_for(lambda: Task.objects.filter(name__in=names).count() == 2)

    shown = blocks(qsignals("--stats"))
    assert shown[path(probe_succeeds)]["tasks"] == "1 succeeded, 0 failed"
    assert "last failure" not in shown[path(probe_succeeds)]
    assert shown[path(probe_fails)]["tasks"] == "0 succeeded, 1 failed"
    when, _, message = shown[path(probe_fails)]["last failure"].partition("  ")
    assert message == "the probe failed, as it should"
    stopped = Task.objects.get(name=path(probe_fails)).stopped
    assert datetime.fromisoformat(when) == stopped.replace(microsecond=0)


# The outbox


@pytest.fixture
def outbox_calls(connect: Connect[Any]) -> Callable[..., Any]:
    """An outbox receiver of ``custom``; two failed calls and one sent."""

    @connect(custom, outbox=True)
    def handler(n: int, **kwargs: Any) -> None:
        raise ValueError(f"no {n}")

    for n in (1, 2):
        custom.send(sender=None, n=n)
    for task in queued_tasks():
        with contextlib.suppress(ValueError):
            run_call(*task["args"])
    purge()
    custom.send(sender=None, n=3)
    result: Callable[..., Any] = handler
    return result


OUTBOX_DATABASES = pytest.mark.django_db(
    transaction=True, databases=["default", "other"]
)


@OUTBOX_DATABASES
def test_stats_count_each_receivers_calls_in_the_outbox(
    outbox_calls: Callable[..., Any],
) -> None:
    shown = blocks(qsignals("--stats"))[path(outbox_calls)]
    assert re.fullmatch(
        r"1 sent, 2 failed; the oldest written \d seconds? ago", shown["outbox"]
    )


@OUTBOX_DATABASES
def test_stats_show_each_outbox_receivers_last_hour(connect: Connect[Any]) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    _history.record("default", path(handler), runs=3, failures=1, waits=[0.02] * 9)
    _history.record("other", path(handler), runs=1, failures=0, waits=[4.0])
    shown = blocks(qsignals("--stats"))[path(handler)]
    assert shown["outbox"] == "empty"
    assert shown["last hour"] == (
        "4 runs, 1 failed; commit to start: median 20 ms, 95th percentile 3.9 s"
    )


@OUTBOX_DATABASES
def test_stats_say_when_an_outbox_receiver_did_not_run_in_the_last_hour(
    connect: Connect[Any],
) -> None:
    @connect(custom, outbox=True)
    def idle(**kwargs: Any) -> None:
        pass

    @connect(custom, outbox=True)
    def retried(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def without_outbox(**kwargs: Any) -> None:
        pass

    # Its run was a retry: no first attempt, no wait.
    _history.record("default", path(retried), runs=1, failures=0, waits=[])
    shown = blocks(qsignals("--stats"))
    assert shown[path(idle)]["last hour"] == "no runs"
    assert shown[path(retried)]["last hour"] == "1 run, 0 failed"
    assert "last hour" not in shown[path(without_outbox)]


@OUTBOX_DATABASES
def test_relay_all_sends_every_call_not_running(
    outbox_calls: Callable[..., Any],
) -> None:
    purge()
    assert qsignals("relay", "--all") == "Sent 3 outbox call(s) to the broker.\n"
    assert len(queued_tasks()) == 3


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_relay_sends_what_is_due() -> None:
    assert qsignals("relay") == "Sent 0 outbox call(s) to the broker.\n"


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_retry_sends_the_failed_calls_again() -> None:
    purge()
    assert qsignals("retry") == "Sent 2 failed outbox call(s) again.\n"
    assert len(queued_tasks()) == 2


@OUTBOX_DATABASES
def test_retry_takes_ids_and_a_handler(outbox_calls: Callable[..., Any]) -> None:
    from django_q_signals.models import OutboxCall

    purge()
    first = OutboxCall.objects.filter(state="failed").order_by("pk").first()
    assert first is not None
    assert qsignals("retry", f"default:{first.pk}") == (
        "Sent 1 failed outbox call(s) again.\n"
    )
    assert qsignals("retry", "--handler", path(outbox_calls)) == (
        "Sent 1 failed outbox call(s) again.\n"
    )


def failed_on_other(pk: int) -> None:
    """A failed call on the other database, with id ``pk``."""
    from django_q_signals.models import OutboxCall

    custom.send(sender=None, n=9, using="other")
    calls = OutboxCall.objects.using("other")
    calls.update(state="failed")
    calls.update(id=pk)


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_an_id_names_a_call_on_one_database() -> None:
    from django_q_signals.models import OutboxCall

    first = OutboxCall.objects.filter(state="failed").order_by("pk").first()
    assert first is not None
    failed_on_other(first.pk)
    with pytest.raises(
        CommandError,
        match=re.escape(
            f"Which database's call {first.pk}? Each database numbers its calls "
            "from 1 (databases with the outbox table: 'default', 'other'): give "
            f"--database ALIAS, or write the id as ALIAS:{first.pk}."
        ),
    ):
        qsignals("discard", str(first.pk))
    assert qsignals("discard", f"default:{first.pk}") == "Discarded 1 outbox call(s).\n"
    assert OutboxCall.objects.using("other").filter(pk=first.pk).exists()
    assert qsignals("discard", "--database", "other", str(first.pk)) == (
        "Discarded 1 outbox call(s).\n"
    )
    assert not OutboxCall.objects.using("other").exists()


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_an_id_that_names_no_call_is_refused_and_nothing_is_done() -> None:
    from django_q_signals.models import OutboxCall

    failed = OutboxCall.objects.filter(state="failed").order_by("pk")[0].pk
    sent = OutboxCall.objects.get(state="sent").pk
    with pytest.raises(
        CommandError,
        match=re.escape(
            f"No failed outbox call has the ids default:{sent}, default:999: "
            "nothing was done."
        ),
    ):
        qsignals("discard", f"default:{failed}", f"default:{sent}", "default:999")
    assert OutboxCall.objects.count() == 3


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_a_handler_that_names_no_call_is_refused() -> None:
    with pytest.raises(
        CommandError,
        match=re.escape(
            "No failed outbox call of the handler 'shop.nobody', on any database: "
            "nothing was done. No receiver is named 'shop.nobody': give a "
            "handler's dotted path or a receiver's name, as manage.py qsignals "
            "lists them."
        ),
    ):
        qsignals("retry", "--handler", "shop.nobody")


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_an_id_that_names_no_call_is_refused_by_retry() -> None:
    with pytest.raises(
        CommandError,
        match=re.escape(
            "No failed outbox call has the id default:999: nothing was done."
        ),
    ):
        qsignals("retry", "--database", "default", "999")


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_a_handler_without_the_outbox_is_refused(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(
        CommandError,
        match=re.escape(
            f"No failed outbox call of the handler '{path(handler)}', on any "
            "database: nothing was done. It does not use the outbox "
            "(outbox=True): its calls go to the broker only, and are never kept."
        ),
    ):
        qsignals("discard", "--handler", path(handler))


@OUTBOX_DATABASES
def test_a_handler_with_the_outbox_and_no_calls_is_refused(
    connect: Connect[Any],
) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(CommandError) as error:
        qsignals("retry", "--handler", path(handler))
    assert str(error.value) == (
        f"No failed outbox call of the handler '{path(handler)}', on any "
        "database: nothing was done."
    )


@OUTBOX_DATABASES
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--database", "nowhere"],
            (
                "The database 'nowhere' has no outbox table (databases with the "
                "outbox table: 'default', 'other')."
            ),
        ),
        (
            ["nowhere:1"],
            (
                "nowhere:1: the database 'nowhere' has no outbox table (databases "
                "with the outbox table: 'default', 'other')."
            ),
        ),
        (["--database", "default", "other:1"], "other:1 is on 'other', not 'default'."),
        (["one"], "'one' is not an outbox call's id: give ID or ALIAS:ID"),
    ],
    ids=["unknown database", "unknown alias", "another database", "no number"],
)
def test_ids_and_databases_are_checked(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        qsignals("discard", *args)


@OUTBOX_DATABASES
def test_retry_takes_a_handlers_path_whatever_its_dispatch_uid(
    connect: Connect[Any],
) -> None:
    def handler(**kwargs: Any) -> None:
        raise ValueError("no")

    connect(custom, outbox=True, dispatch_uid="first")(handler)
    connect(custom, outbox=True, dispatch_uid="second")(handler)
    custom.send(sender=None)
    for task in queued_tasks():
        with contextlib.suppress(ValueError):
            run_call(*task["args"])
    purge()
    assert qsignals("retry", "--handler", path(handler)) == (
        "Sent 2 failed outbox call(s) again.\n"
    )
    discard = ("discard", "--state", "any", "--handler", f"{path(handler)}#second")
    assert qsignals(*discard) == "Discarded 1 outbox call(s).\n"


@OUTBOX_DATABASES
def test_stats_name_each_receivers_failed_calls_by_database_and_id(
    outbox_calls: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q_signals.models import OutboxCall

    ids = list(
        OutboxCall.objects.filter(state="failed")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    failed_on_other(1)
    shown = blocks(qsignals("--stats"))[path(outbox_calls)]
    assert shown["failed calls"] == (f"default:{ids[0]}, default:{ids[1]}, other:1")
    monkeypatch.setattr(outbox_stats, "_FAILED_NAMED", 2)
    shown = blocks(qsignals("--stats"))[path(outbox_calls)]
    assert shown["failed calls"] == f"default:{ids[0]}, default:{ids[1]} and 1 more"


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_discard_deletes_failed_calls_unless_told_otherwise() -> None:
    from django_q_signals.models import OutboxCall

    assert qsignals("discard", "--no-input") == "Discarded 2 outbox call(s).\n"
    assert list(OutboxCall.objects.values_list("state", flat=True)) == ["sent"]
    assert qsignals("discard", "--state", "any", "--noinput") == (
        "Discarded 1 outbox call(s).\n"
    )


def shared_cache(tmp_path: Path) -> dict[str, Any]:
    """A cache every process shares, where Django Q2 finds its clusters."""
    backend = "django.core.cache.backends.filebased.FileBasedCache"
    return {"default": {"BACKEND": backend, "LOCATION": str(tmp_path / "cache")}}


def django_q2_block(output: str) -> dict[str, str]:
    """The ``label: value`` lines of ``--stats``' Django Q2 block."""
    block = output.split("\nDjango Q2\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    pairs = (line.partition(": ") for line in lines)
    return {label: value.strip() for label, _, value in pairs}


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_count_the_tasks_waiting_on_the_broker(connect: Connect[Any]) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    custom.send(sender=None, n=2)
    said = django_q2_block(qsignals("--stats"))
    assert said["queue 'tests'"] == "2 tasks waiting"
    if _brokers.is_orm(None):
        # The ORM broker keeps clusters' status in Django's cache, here the
        # test process's own.
        assert said["clusters"].startswith("not known here")


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_warn_when_tasks_wait_and_no_cluster_runs(
    connect: Connect[Any], tmp_path: Path
) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    with override_settings(CACHES=shared_cache(tmp_path)):
        said = django_q2_block(qsignals("--stats"))
    assert said["queue 'tests'"] == "1 tasks waiting"
    assert said["clusters"] == "none running"
    assert said["WARNING"] == (
        "1 tasks wait on the broker and no qcluster runs them: start one with "
        "`python manage.py qcluster`."
    )


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_say_nothing_is_wrong_when_no_task_waits(tmp_path: Path) -> None:
    with override_settings(CACHES=shared_cache(tmp_path)):
        said = django_q2_block(qsignals("--stats"))
    assert said["queue 'tests'"] == "0 tasks waiting"
    assert said["clusters"] == "none running"
    assert "WARNING" not in said


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_cannot_see_clusters_without_django_q2s_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_q.conf import Conf

    if not _brokers.is_orm(None):
        pytest.skip("the Redis broker keeps clusters' status in Redis")
    monkeypatch.setattr(Conf, "CACHE", "no such cache")
    said = django_q2_block(qsignals("--stats"))
    assert said["clusters"].startswith("not known here")


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_say_when_the_clusters_status_cannot_be_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not _brokers.is_orm(None):
        pytest.skip("the Redis broker keeps clusters' status in Redis")
    # Django Q2 keeps it in Django's cache: here a Redis nobody listens for.
    down = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    with override_settings(CACHES=down):
        said = django_q2_block(qsignals("--stats"))
    assert said["clusters"].startswith("not known: their status could not be read")
    assert "Could not read the clusters' status" in caplog.text


@pytest.mark.django_db(databases=["default", "other"])
def test_stats_do_not_hide_a_broker_that_does_not_answer(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    class Unanswering:
        def enqueue(self, task: str) -> None:
            raise AssertionError("nothing is queued here")

        def queue_size(self) -> int:
            raise ConnectionError("no answer")

    @connect(custom, q_options={"broker": Unanswering()})
    def handler(**kwargs: Any) -> None:
        pass

    said = django_q2_block(qsignals("--stats"))
    assert said["queue Unanswering"] == "not known"
    assert "could not ask the broker how full it is" in caplog.text


@pytest.mark.services
@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_stats_name_the_running_cluster(worker: Worker, connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    def running() -> str:
        return django_q2_block(qsignals("--stats"))["clusters"]

    # A cluster says how it is every few seconds once it runs.
    worker.wait_for(lambda: running() != "none running", timeout=60)
    assert "(2 workers, " in running()


class Terminal(StringIO):
    """Answers typed on a terminal."""

    def isatty(self) -> bool:
        return True


def discard_with(stdin: StringIO, *args: str) -> str:
    out = StringIO()
    call_command("qsignals", "discard", *args, stdin=stdin, stdout=out)
    return out.getvalue()


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
@pytest.mark.parametrize("answer", ["y\n", "yes\n", "Y\n"])
def test_discard_of_every_failed_call_asks_first(answer: str) -> None:
    from django_q_signals.models import OutboxCall

    assert discard_with(Terminal(answer)) == (
        "Discard 2 failed outbox calls? [y/N] Discarded 2 outbox call(s).\n"
    )
    assert list(OutboxCall.objects.values_list("state", flat=True)) == ["sent"]


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
@pytest.mark.parametrize("answer", ["\n", "n\n", "", "whatever\n"])
def test_discard_does_nothing_unless_the_answer_is_yes(answer: str) -> None:
    from django_q_signals.models import OutboxCall

    assert discard_with(Terminal(answer), "--state", "any") == (
        "Discard 3 outbox calls? [y/N] Discard cancelled: nothing was done.\n"
    )
    assert OutboxCall.objects.count() == 3


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_discard_without_a_terminal_refuses_unless_told_not_to_ask() -> None:
    from django_q_signals.models import OutboxCall

    with pytest.raises(
        CommandError,
        match=re.escape(
            "Discard 2 failed outbox calls? Nothing was done: there is no terminal "
            "to answer on. Pass --no-input to discard them without asking."
        ),
    ):
        discard_with(StringIO("y\n"))
    assert OutboxCall.objects.count() == 3


@OUTBOX_DATABASES
@pytest.mark.usefixtures("outbox_calls")
def test_discard_asks_nothing_when_it_names_the_calls() -> None:
    from django_q_signals.models import OutboxCall

    first = OutboxCall.objects.filter(state="failed").order_by("pk")[0]
    assert discard_with(StringIO(), f"default:{first.pk}") == (
        "Discarded 1 outbox call(s).\n"
    )
    assert discard_with(StringIO(), "--handler", first.receiver) == (
        "Discarded 1 outbox call(s).\n"
    )


@OUTBOX_DATABASES
def test_discard_asks_nothing_when_there_is_nothing_to_discard() -> None:
    assert discard_with(StringIO()) == "Discarded 0 outbox call(s).\n"
