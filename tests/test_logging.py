"""The django_q_signals logger: what each level says."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import transaction

from tests.conftest import Connect, custom, queued_tasks, run_queued

pytestmark = pytest.mark.django_db(transaction=True)


def test_queuing_and_running_are_logged_at_debug(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    caplog.set_level(logging.DEBUG, logger="django_q_signals")
    custom.send(sender=None)
    run_queued()
    key = "tests.test_logging.test_queuing_and_running_are_logged_at_debug"
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("django_q_signals", "DEBUG", f"Queued {key}.<locals>.handler()"),
        ("django_q_signals", "DEBUG", f"Running {key}.<locals>.handler"),
    ]


def test_django_q2_logs_nothing_about_the_queue_it_was_not_given(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    caplog.set_level(logging.INFO, logger="django-q")
    with transaction.atomic():
        custom.send(sender=None)
    custom.send(sender=None)
    assert [r for r in caplog.records if r.name == "django-q"] == []
    assert len(queued_tasks()) == 2
