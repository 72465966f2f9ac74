"""Django Q2's task time limit, kept to the handlers' own code.

A Django Q2 worker enforces a task's ``timeout`` with ``SIGALRM``: the
signal's handler raises ``TimeoutException`` (a ``SystemExit``) wherever the
task is at that moment. Inside a handler, that cuts the call short, and the
run records it as a failed call. Between two calls, or while the run records
what its calls did, it would leave finished calls unrecorded (they would run
again) and the rest unsent, so there it only notes that the time is up: the
run stops before the next call and records everything first.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class TimeLimit:
    """Where the time limit may cut a run: inside ``handler()`` only."""

    def __init__(self) -> None:
        #: Whether the limit was reached outside a handler.
        self.reached = False
        # The worker's own SIGALRM handler, where one is set (and this is
        # the main thread, the only one that may set handlers).
        self._cut: Any = None

    def __enter__(self) -> TimeLimit:
        cut = signal.getsignal(signal.SIGALRM)
        if callable(cut):
            try:
                signal.signal(signal.SIGALRM, self._note)
            except ValueError:  # pragma: no cover (a thread: no time limit)
                return self
            self._cut = cut
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._cut is not None:
            signal.signal(signal.SIGALRM, self._cut)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.reached = True

    @contextmanager
    def handler(self) -> Iterator[None]:
        """Run a handler where the time limit cuts it short."""
        if self._cut is None:
            yield
            return
        signal.signal(signal.SIGALRM, self._cut)
        try:
            yield
        finally:
            signal.signal(signal.SIGALRM, self._note)

    def check(self) -> None:
        """Stop the run here if the time limit was reached since the last
        handler returned: raise what the worker raises at its time limit."""
        if self.reached:
            self.reached = False
            self._cut(signal.SIGALRM, None)
