"""System checks, each id, and ``manage.py check`` as a whole."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.dispatch import Signal
from django.test import override_settings

from django_q_signals import checks
from tests.conftest import Connect

custom = Signal()


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


def test_manage_py_check_passes_on_a_working_project() -> None:
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "System check identified no issues" in out.getvalue()


def test_e001_django_q_not_installed() -> None:
    apps = ["django.contrib.contenttypes", "django_q_signals", "tests"]
    with override_settings(INSTALLED_APPS=apps):
        messages = checks.check_django_q_installed()
    assert ids(messages) == ["django_q_signals.E001"]
    assert "INSTALLED_APPS" in messages[0].msg


def test_e001_silent_when_django_q_is_installed() -> None:
    assert checks.check_django_q_installed() == []


@pytest.mark.parametrize(
    ("q_cluster", "text"),
    [
        (None, "Q_CLUSTER is not set"),
        ("orm", "Q_CLUSTER must be a dict, not str"),
        ({"name": "x", "orm": "missing"}, "'missing', which is not in DATABASES"),
    ],
)
def test_e002_no_usable_q_cluster(q_cluster: Any, text: str) -> None:
    with override_settings(Q_CLUSTER=q_cluster):
        messages = checks.check_q_cluster()
    assert ids(messages) == ["django_q_signals.E002"]
    assert text in messages[0].msg


def test_e002_silent_for_a_redis_broker() -> None:
    with override_settings(Q_CLUSTER={"name": "x", "redis": {"host": "localhost"}}):
        assert checks.check_q_cluster() == []


def test_w001_handler_defined_in_a_function(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    messages = checks.check_receivers_importable()
    assert ids(messages) == ["django_q_signals.W001"]
    assert messages[0].obj is handler
    assert "inside a function" in messages[0].msg

    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "django_q_signals.W001" in out.getvalue()


def test_w001_handler_defined_in_main(connect: Connect[Any]) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    handler.__module__ = "__main__"
    handler.__qualname__ = "handler"
    connect(custom)(handler)

    [message] = checks.check_receivers_importable()
    assert "__main__" in message.msg


def test_w001_silent_for_module_level_handlers() -> None:
    import tests.handlers  # noqa: F401

    assert checks.check_receivers_importable() == []
