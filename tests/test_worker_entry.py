"""The task entry point refuses what it cannot trust or find."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest

from django_q_signals import _payload
from django_q_signals._registry import get_receiver
from django_q_signals.worker import run_receiver
from tests.conftest import Connect, custom, queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def payload(*data: Any) -> bytes:
    return pickle.dumps(list(data))


def test_a_module_level_handler_is_found_by_importing_its_module() -> None:
    import sys

    import tests.handlers

    registered = get_receiver("tests.handlers.record_note", "tests.handlers")
    assert registered is not None
    assert registered.func is tests.handlers.record_note
    assert "tests.handlers" in sys.modules


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not a pickle", "Not a django-q-signals payload"),
        (pickle.dumps(("too", "short")), "Not a django-q-signals payload"),
        (payload(_payload.FORMAT, "k"), "Not a django-q-signals payload"),
        (payload(99, "k", "m", 0, b""), f"Payload format 99 is not {_payload.FORMAT}"),
        (
            payload(_payload.FORMAT, "tests.nowhere.handler", "tests", 0, b""),
            "No async receiver 'tests.nowhere.handler' in this worker",
        ),
    ],
)
def test_a_payload_it_cannot_use_is_refused(
    data: bytes, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises((ValueError, LookupError), match=error):
        run_receiver(data)
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "Refused a queued signal"


def test_a_module_that_cannot_be_imported_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = payload(_payload.FORMAT, "no_such_module.handler", "no_such_module", 0, b"")
    with pytest.raises(LookupError):
        run_receiver(data)
    assert "Could not import no_such_module" in caplog.records[0].getMessage()


def test_run_receiver_returns_what_the_handler_returns(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(n: int, **kwargs: Any) -> int:
        return n * 2

    custom.send(sender=None, n=21)
    [task] = queued_tasks()
    assert run_receiver(*task["args"]) == 42


class TwoArguments(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")


def test_a_call_that_cannot_be_unpickled_names_its_receiver(
    connect: Connect[Any],
) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, error=TwoArguments(1, "broken"))
    [task] = queued_tasks()
    with pytest.raises(ValueError, match=r"A call to .*handler failed: Could not "):
        run_receiver(*task["args"])
