"""Helpers for testing code whose signals go to async receivers.

Both take the calls where the broker would: after the commit unless a
receiver has ``on_commit=False``, so a rolled-back transaction runs or
captures nothing. In a test that runs inside a transaction (Django's
``TestCase``, pytest-django's ``django_db`` without ``transaction=True``),
the commit never comes: wrap the code in ``captureOnCommitCallbacks
(execute=True)`` (``django_capture_on_commit_callbacks`` in pytest-django)
to run its commit callbacks.

The calls take the same way as in a worker: the task's payload is pickled
and read, model instances are loaded again from the database, and the
handler is called, batched receivers in batches. Every call runs; then the first
handler exception (for a batch, its ``BatchError``) reaches the test.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from django_q_signals import _send
from django_q_signals._payload import open_call
from django_q_signals._rows import Rows, rebuild

if TYPE_CHECKING:
    from django.dispatch import Signal

    from django_q_signals._payload import Call

__all__ = ["CapturedCall", "CapturedCalls", "capture_calls", "run_immediately"]


@contextmanager
def run_immediately() -> Iterator[None]:
    """Run async receivers in this process, when their calls would be queued.

    Works as a context manager and as a function decorator.
    """
    with _diverted(_run):
        yield


@contextmanager
def capture_calls() -> Iterator[CapturedCalls]:
    """Keep the calls async receivers would queue, to assert on or run later."""
    captured = CapturedCalls()
    with _diverted(lambda calls: captured.extend(map(CapturedCall, calls))):
        yield captured


class CapturedCall:
    """A call an async receiver would have queued."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def __repr__(self) -> str:
        return f"<CapturedCall {self._call}>"

    @property
    def handler(self) -> Callable[..., Any]:
        """The decorated function."""
        return self._call.receiver.func

    @property
    def name(self) -> str:
        """The name the worker finds the receiver by (its dotted path)."""
        return self._call.receiver.name

    @property
    def signal(self) -> Signal:
        signal: Signal = self._call.receiver.signals[self._call.data[0]]
        return signal

    @property
    def sender(self) -> Any:
        return self._rebuild()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the handler would get if it ran now.

        Model instances are loaded from the database on each access, as a
        worker would load them; a row that is gone gives None and its pk as
        ``_<name>_pk``. ``signal`` and ``sender`` are not included.
        """
        return self._rebuild()[1]

    def run(self) -> Any:
        """Run the handler as a worker would, and return what it returns."""
        return _run([self._call])

    def _rebuild(self) -> tuple[Any, dict[str, Any]]:
        receiver = self._call.receiver
        arguments = open_call(_as_queued(self._call.data), receiver, self._call.alias)
        return rebuild(receiver, arguments, Rows(receiver, [arguments]))


class CapturedCalls(list[CapturedCall]):
    """The captured calls, in the order they would have been queued."""

    def run(self) -> None:
        """Run every call as the worker would, batched receivers in batches."""
        _run([captured._call for captured in self])


@contextmanager
def _diverted(target: Callable[[list[Call]], None]) -> Iterator[None]:
    # An entry of its own (a partial equals only itself), so that leaving
    # removes this helper's entry and no other, however helpers nest.
    entry = functools.partial(target)
    _send.diversions.append(entry)
    try:
        yield
    finally:
        _send.diversions.remove(entry)


def _as_queued(value: Any) -> Any:
    """``value`` after the trip through the broker: pickled, then loaded."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def _run(calls: list[Call]) -> Any:
    """Run each task; as in a worker, one task failing does not stop the next.

    The first error is raised once all have run.
    """
    result = error = None
    for task_calls in _send.split_into_tasks(calls):
        func, args = _send.task_function(task_calls)
        try:
            result = import_string(func)(*_as_queued(args))
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
    return result
