"""The task entry point refuses what it cannot trust or find."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from django_q_signals import _payload
from django_q_signals._registry import get_receiver
from django_q_signals.worker import run_call
from tests.conftest import Connect, TwoArguments, custom, queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


#: A call with no values, to the first signal, from no sender.
NO_VALUES = (0, ((), "v"), None)


def test_a_module_level_handler_is_found_by_importing_its_module() -> None:
    import sys

    import tests.handlers

    registered = get_receiver("tests.handlers.record_note")
    assert registered is not None
    assert registered.func is tests.handlers.record_note
    assert "tests.handlers" in sys.modules


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"a payload of version 1", "Not a django-q-signals payload"),
        (("too", "short"), "Not a django-q-signals payload"),
        ((_payload.FORMAT, "k"), "Not a django-q-signals payload"),
        ((_payload.FORMAT, 1, 2, NO_VALUES), "Not a django-q-signals payload"),
        (
            (99, "k", "default", NO_VALUES),
            f"Payload format 99 is not {_payload.FORMAT}",
        ),
        (
            (_payload.FORMAT, "tests.nowhere.handler", "default", NO_VALUES),
            "No async receiver 'tests.nowhere.handler' in this worker",
        ),
    ],
)
def test_a_payload_it_cannot_use_is_refused(
    data: Any, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises((ValueError, LookupError), match=error):
        run_call(data)
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "Refused a queued signal"


def test_a_module_that_cannot_be_imported_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = (_payload.FORMAT, "no_such_module.handler", "default", NO_VALUES)
    with pytest.raises(LookupError):
        run_call(data)
    assert caplog.records[0].getMessage() == (
        "No module of no_such_module.handler could be imported"
    )


@pytest.mark.parametrize(
    "source",
    [
        "import no_such_dependency\n",
        "raise ImportError('libgeos_c.so: cannot open shared object file')\n",
    ],
)
def test_a_module_that_fails_to_import_is_logged_with_its_error(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    (tmp_path / "broken_handlers.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = (_payload.FORMAT, "broken_handlers.handler", "default", NO_VALUES)
    with pytest.raises(LookupError):
        run_call(data)
    first = caplog.records[0]
    assert first.getMessage() == (
        "Could not import broken_handlers to find receiver broken_handlers.handler"
    )
    assert first.exc_info is not None


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ((0, (("created",), "vv"), None), "0 values for ('created',) (vv)"),
        ((0, (("created",), "vx"), None, True), "unknown kind 'x'"),
    ],
)
def test_a_call_whose_values_do_not_match_their_layout_is_refused(
    values: tuple[Any, ...], error: str
) -> None:
    import tests.handlers  # noqa: F401

    data = (_payload.FORMAT, "tests.handlers.record_note", "default", values)
    with pytest.raises(ValueError, match="Could not unpickle its arguments") as info:
        run_call(data)
    assert str(info.value).endswith(f"ValueError: {error}")


def test_run_call_returns_what_the_handler_returns(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(n: int, **kwargs: Any) -> int:
        return n * 2

    custom.send(sender=None, n=21)
    [task] = queued_tasks()
    assert run_call(*task["args"]) == 42


def test_a_call_that_cannot_be_unpickled_names_its_receiver(
    connect: Connect[Any],
) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, error=TwoArguments(1, "broken"))
    [task] = queued_tasks()
    with pytest.raises(ValueError, match=r"A call to .*handler failed: Could not "):
        run_call(*task["args"])
