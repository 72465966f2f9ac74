"""``progress()``: how far a handler running for an outbox call is, kept on
the call's row for ``pending()``, the admin and the status fragment.

The worker says which call runs (``reporting()``); ``progress()`` hands the
numbers to a writer thread of the process, which writes them with its own
connection, in autocommit: never in the handler's transaction, never a wait
for the handler, and from ``async def`` handlers too. Reports are thinned
out to about one write a second a call; the one saying the work is done is
always written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import connections

if TYPE_CHECKING:
    from django_q_signals._claim import Claim
    from django_q_signals._outbox import Ref

logger = logging.getLogger("django_q_signals")

#: Seconds between two writes of one call's progress, at least.
EVERY = 1.0
#: The longest note kept (the column's length).
NOTE_AT_MOST = 200


class _Running:
    """The outbox call whose handler runs in this context."""

    __slots__ = ("alias", "claim", "pk", "written_at")

    def __init__(self, alias: str, pk: int, claim: str) -> None:
        self.alias = alias
        self.pk = pk
        self.claim = claim
        self.written_at: float | None = None


_running: ContextVar[_Running | None] = ContextVar("qsignals_running", default=None)


@contextlib.contextmanager
def reporting(claim: Claim | None, ref: Ref | None) -> Iterator[None]:
    """Within the block, ``progress()`` reports on the call at ``ref`` (if it
    is an outbox call this run holds)."""
    if claim is None or ref is None or not claim.holds(ref):
        yield
        return
    token = _running.set(_Running(ref[0], ref[1], claim.token))
    try:
        yield
    finally:
        _running.reset(token)


def progress(done: float, total: float | None = None, note: str = "") -> None:
    """Say how far the handler is: ``done`` of ``total`` (``total`` None: a
    count with no end known), with a ``note`` for people.

    Recorded on the running outbox call's row, as ``progress_done``,
    ``progress_total`` and ``progress_note``, at most about once a second; a
    report with ``done == total`` is always recorded. Outside a handler
    running for an outbox call it does nothing.
    """
    if not _is_number(done) or done < 0:
        raise TypeError(f"done must be a number of 0 or more, not {done!r}.")
    if total is not None and not (_is_number(total) and total > 0):
        raise TypeError(f"total must be a number above 0 or None, not {total!r}.")
    if not isinstance(note, str):
        raise TypeError(f"note must be a string, not {note!r}.")
    running = _running.get()
    if running is None:
        return
    now = time.monotonic()
    finished = total is not None and done >= total
    if (
        running.written_at is not None
        and now - running.written_at < EVERY
        and not finished
    ):
        return
    running.written_at = now
    _writer().put(
        (running.alias, running.pk, running.claim, done, total, note[:NOTE_AT_MOST])
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Writer(threading.Thread):
    """Writes progress reports, in the order they came, one at a time."""

    def __init__(self) -> None:
        super().__init__(name="django_q_signals progress", daemon=True)
        self.reports: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def put(self, report: tuple[Any, ...]) -> None:
        self.reports.put(report)

    def run(self) -> None:
        while True:
            report = self.reports.get()
            try:
                _write(*report)
            except Exception:
                logger.warning("Could not record a handler's progress", exc_info=True)
            finally:
                # A call reports about once a second at most: no connection
                # is kept open between reports.
                connections.close_all()
                self.reports.task_done()


_writers: dict[int, _Writer] = {}
_writers_lock = threading.Lock()


def _writer() -> _Writer:
    """This process's writer (a forked worker starts its own)."""
    pid = os.getpid()
    with _writers_lock:
        writer = _writers.get(pid)
        if writer is None:
            writer = _writers[pid] = _Writer()
            writer.start()
    return writer


def flush() -> None:
    """Wait until the reports made so far are written."""
    writer = _writers.get(os.getpid())
    if writer is not None:
        writer.reports.join()


def _write(
    alias: str, pk: int, claim: str, done: float, total: float | None, note: str
) -> None:
    """One UPDATE of the call's row, while ``claim`` still holds it."""
    from django_q_signals.models import OutboxCall

    OutboxCall.objects.using(alias).filter(pk=pk, claim=claim).update(
        progress_done=done, progress_total=total, progress_note=note
    )
