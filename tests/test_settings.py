"""Project-wide defaults in settings.Q_SIGNALS."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import transaction
from django.db.models.signals import post_save
from django.test import override_settings

from django_q_signals import async_receiver
from tests.conftest import Connect, custom, queued_tasks, run_queued
from tests.models import Article

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(Q_SIGNALS={"ON_COMMIT": False})
def test_on_commit_false_in_the_settings_queues_inside_the_transaction(
    numbers: list[int],
) -> None:
    with transaction.atomic():
        custom.send(sender=None, n=1)
        assert len(queued_tasks()) == 1
    run_queued()
    assert numbers == [1]


@override_settings(Q_SIGNALS={"ON_COMMIT": False})
def test_on_commit_given_to_the_decorator_wins_over_the_settings(
    connect: Connect[Any],
) -> None:
    @connect(custom, on_commit=True)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        custom.send(sender=None)
        assert queued_tasks() == []
    assert len(queued_tasks()) == 1


@pytest.mark.usefixtures("numbers")
def test_settings_are_read_when_the_signal_fires_not_when_decorating() -> None:
    with override_settings(Q_SIGNALS={"ON_COMMIT": False}), transaction.atomic():
        custom.send(sender=None, n=1)
        assert len(queued_tasks()) == 1
    with transaction.atomic():
        custom.send(sender=None, n=2)
        assert len(queued_tasks()) == 1
    assert len(queued_tasks()) == 2


@pytest.mark.usefixtures("numbers")
@override_settings(Q_SIGNALS={"Q_OPTIONS": {"group": "signals", "timeout": 9}})
def test_default_q_options_reach_django_q2() -> None:
    custom.send(sender=None, n=1)
    [task] = queued_tasks()
    assert (task["group"], task["timeout"]) == ("signals", 9)
    # The task is still named after its receiver.
    assert task["name"] == "tests.conftest.numbers.<locals>.handler"


@override_settings(Q_SIGNALS={"Q_OPTIONS": {"group": "signals", "timeout": 9}})
def test_a_receivers_q_options_win_over_the_defaults(connect: Connect[Any]) -> None:
    @connect(custom, q_options={"timeout": 3})
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    [task] = queued_tasks()
    assert (task["group"], task["timeout"]) == ("signals", 3)


@override_settings(Q_SIGNALS={"BATCH_SIZE": 3})
def test_batch_true_takes_its_size_from_the_settings(connect: Connect[Any]) -> None:
    @connect(custom, batch=True)
    def handler(**kwargs: Any) -> None:
        pass

    with transaction.atomic():
        for n in range(7):
            custom.send(sender=None, n=n)
    assert [len(task["args"][0][3]) for task in queued_tasks()] == [3, 3, 1]


@pytest.mark.parametrize(
    ("q_signals", "error"),
    [
        ([("ON_COMMIT", False)], "settings.Q_SIGNALS must be a dict, not list."),
        (
            {"ON_COMIT": False},
            (
                "Unknown settings.Q_SIGNALS key 'ON_COMIT' (did you mean "
                "'ON_COMMIT'?); the known ones are "
                "BATCH_SIZE, ON_COMMIT, ORDERED, OUTBOX, OUTBOX_RELAY_AFTER, "
                "Q_OPTIONS, STATUS_PERMISSION, SUPERSEDE."
            ),
        ),
        (
            {"ON_COMMIT": "no"},
            "settings.Q_SIGNALS['ON_COMMIT'] must be True or False, not 'no'.",
        ),
        (
            {"OUTBOX": "yes"},
            "settings.Q_SIGNALS['OUTBOX'] must be True or False, not 'yes'.",
        ),
        (
            {"OUTBOX_RELAY_AFTER": "1m"},
            (
                "settings.Q_SIGNALS['OUTBOX_RELAY_AFTER'] must be a number of "
                "seconds, not '1m'."
            ),
        ),
        (
            {"BATCH_SIZE": 0},
            (
                "settings.Q_SIGNALS['BATCH_SIZE'] must be a whole number of 1 or more, "
                "not 0."
            ),
        ),
        (
            {"Q_OPTIONS": [("timeout", 9)]},
            "settings.Q_SIGNALS['Q_OPTIONS'] must be a dict, not [('timeout', 9)].",
        ),
        (
            {"Q_OPTIONS": {"retry": 9}},
            (
                "Unknown settings.Q_SIGNALS['Q_OPTIONS'] 'retry'. Django Q2 "
                "task options are: ack_failure, broker, cached, cluster, group, "
                "hook, save, sync, task_name, timeout. retry can only be set for "
                "the whole cluster, in Q_CLUSTER."
            ),
        ),
        (
            {"Q_OPTIONS": {"gruop": "mail"}},
            (
                "Unknown settings.Q_SIGNALS['Q_OPTIONS'] 'gruop' (did you mean "
                "'group'?). Django Q2 task options are: ack_failure, broker, "
                "cached, cluster, group, hook, save, sync, task_name, timeout."
            ),
        ),
        (
            {"Q_OPTIONS": {"timeout": "30", "ack_failure": 1}},
            (
                "In settings.Q_SIGNALS['Q_OPTIONS'], 'timeout' must be a whole "
                "number of seconds, or None, not '30'; 'ack_failure' must be True "
                "or False, not 1."
            ),
        ),
        (
            {"STATUS_PERMISSION": "tests.nowhere.allowed"},
            (
                "settings.Q_SIGNALS['STATUS_PERMISSION'] cannot be imported: No "
                "module named 'tests.nowhere'."
            ),
        ),
        (
            {"STATUS_PERMISSION": True},
            (
                "settings.Q_SIGNALS['STATUS_PERMISSION'] must be a function "
                "(request, instance) -> bool, or its dotted path, not True."
            ),
        ),
        (
            {"Q_OPTIONS": {"task_name": "all"}},
            (
                "settings.Q_SIGNALS['Q_OPTIONS'] cannot set task_name: each receiver's "
                "tasks are named after it."
            ),
        ),
    ],
)
def test_a_bad_setting_is_logged_and_its_default_used(
    numbers: list[int],
    caplog: pytest.LogCaptureFixture,
    q_signals: Any,
    error: str,
) -> None:
    with override_settings(Q_SIGNALS=q_signals), transaction.atomic():
        custom.send(sender=None, n=1)
        # ON_COMMIT's default: nothing is queued before the commit.
        assert queued_tasks() == []
    [task] = queued_tasks()
    assert "timeout" not in task or task["timeout"] != 9
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"{error} The default is used instead."
    ]
    run_queued()
    assert numbers == [1]


def test_a_bad_batch_size_setting_keeps_every_call(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    received = []

    @connect(post_save, sender=Article, batch=True)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance.title)

    with override_settings(Q_SIGNALS={"BATCH_SIZE": "10"}), transaction.atomic():
        Article.objects.create(title="kept")
    run_queued()
    assert received == ["kept"]
    assert "settings.Q_SIGNALS['BATCH_SIZE'] must be a whole number" in caplog.text


@pytest.mark.parametrize("on_commit", ["yes", 1])
def test_a_bad_on_commit_is_refused(on_commit: Any) -> None:
    with pytest.raises(TypeError, match="on_commit must be True, False or None"):
        async_receiver(custom, on_commit=on_commit)


@pytest.mark.parametrize(
    ("q_options", "error"),
    [
        ({"timeout": "30"}, "'timeout' must be a whole number of seconds, or None"),
        ({"timeout": 0}, "'timeout' must be a whole number of seconds, or None"),
        ({"timeout": 2.5}, "'timeout' must be a whole number of seconds, or None"),
        ({"group": 7}, "'group' must be a group name, not 7"),
        ({"group": ""}, "'group' must be a group name, not ''"),
        ({"task_name": "x" * 101}, "'task_name' must be a name of at most 100"),
        ({"hook": "not_a_path"}, "'hook' must be a module-level function, or its"),
        ({"hook": lambda task: None}, "'hook' must be a module-level function, or its"),
        ({"save": "yes"}, "'save' must be True or False"),
        ({"cached": -1}, "'cached' must be True, False or a number of seconds"),
        ({"cluster": None}, "'cluster' must be the name of a cluster"),
        ({"broker": "redis"}, "'broker' must be a Django Q2 broker object"),
    ],
)
def test_a_bad_q_option_value_is_refused(q_options: dict[str, Any], error: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"In q_options, {error}")):
        async_receiver(custom, q_options=q_options)


def test_timeout_none_leaves_the_clusters_timeout(connect: Connect[Any]) -> None:
    @connect(custom, q_options={"timeout": None})
    def handler(**kwargs: Any) -> None:
        pass

    with override_settings(Q_SIGNALS={"Q_OPTIONS": {"timeout": 9}}):
        custom.send(sender=None)
    [task] = queued_tasks()
    assert "timeout" not in task


@pytest.mark.parametrize("hook_as", ["path", "function"])
def test_good_q_option_values_are_taken(connect: Connect[Any], hook_as: str) -> None:
    from tests.handlers import record_note

    hook = record_note if hook_as == "function" else "tests.handlers.record_note"

    @connect(
        custom,
        q_options={
            "timeout": 5,
            "hook": hook,
            "cached": 60,
            "save": False,
            "ack_failure": True,
        },
    )
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None)
    [task] = queued_tasks()
    assert (task["timeout"], task["cached"], task["save"]) == (5, 60, False)
    assert task["hook"] == hook


@pytest.mark.usefixtures("numbers")
def test_the_clusters_cached_setting_reaches_the_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "CACHED", 60)
    custom.send(sender=None, n=1)
    [task] = queued_tasks()
    assert task["cached"] == 60
