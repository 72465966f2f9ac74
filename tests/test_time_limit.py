"""Django Q2's task time limit: the call it cuts short fails, no other.

A Django Q2 worker runs each task under ``django_q.timeout.TimeoutHandler``:
at the task's ``timeout`` a SIGALRM raises ``TimeoutException``, a
``SystemExit``, wherever the task is. These tests run the worker's functions
under that same handler.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.exceptions import TimeoutException
from django_q.timeout import TimeoutHandler

from django_q_signals import _relay
from django_q_signals._time_limit import TimeLimit
from django_q_signals.worker import run_batch, run_call
from tests.conftest import Connect, custom, purge, queued_tasks, run_queued

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

#: What a handler that outlives the time limit does.
OUTLIVE = 5


def run_within_a_second(func: Any, *args: Any) -> Any:
    """Run ``func`` as a worker runs a task whose timeout is one second."""
    with TimeoutHandler(1):
        return func(*args)


def taken_batch(calls: int) -> dict[str, Any]:
    """The task of ``calls`` signals sent in one commit, taken off the
    broker as a worker takes it."""
    with transaction.atomic():
        for n in range(calls):
            custom.send(sender=None, n=n)
    [task] = queued_tasks()
    purge()
    return task


def rows() -> list[tuple[str, int, str]]:
    """Each outbox row: state, attempts, the last line of its error."""
    from django_q_signals.models import OutboxCall

    found = OutboxCall.objects.order_by("pk").values_list("state", "attempts", "error")
    return [
        (state, attempts, error.rpartition("\n")[2]) for state, attempts, error in found
    ]


@pytest.mark.outbox
def test_a_batch_cut_short_fails_that_call_and_sends_the_rest_again(
    connect: Connect[Any],
) -> None:
    from django_q_signals.models import OutboxCall

    runs: list[int] = []

    @connect(custom, outbox=True, batch=True, retries=1)
    def handler(n: int, **kwargs: Any) -> None:
        runs.append(n)
        if n == 1 and runs.count(1) == 1:
            time.sleep(OUTLIVE)

    task = taken_batch(4)
    with pytest.raises(TimeoutException) as cut:
        run_within_a_second(run_batch, *task["args"])

    assert runs == [0, 1]
    message = str(cut.value)
    assert message.startswith("Task exceeded maximum timeout value (1 seconds)")
    assert "call 2 of 4 was cut short" in message
    assert "calls 3, 4 did not run and were sent again" in message
    # The call that returned is done; the one cut short failed, with a retry
    # due; the two after it were sent again, as one task.
    limit = (
        "django_q.exceptions.TimeoutException: "
        "Task exceeded maximum timeout value (1 seconds)"
    )
    assert rows() == [
        (OutboxCall.State.FAILED, 1, limit),
        (OutboxCall.State.SENT, 0, ""),
        (OutboxCall.State.SENT, 0, ""),
    ]
    [again] = queued_tasks()
    assert [call[3] for call in again["args"][0][3]] == [2, 3]

    run_queued()
    assert runs == [0, 1, 2, 3]
    [row] = OutboxCall.objects.all()
    assert row.due is not None
    _relay.run(now=row.due)
    run_queued()
    assert runs == [0, 1, 2, 3, 1]
    assert OutboxCall.objects.count() == 0


@pytest.mark.outbox
def test_a_call_that_always_outlives_the_limit_fails_as_its_retries_say(
    connect: Connect[Any],
) -> None:
    from django_q_signals.models import OutboxCall

    runs: list[str] = []

    @connect(custom, outbox=True, retries=1)
    def handler(**kwargs: Any) -> None:
        runs.append("run")
        time.sleep(OUTLIVE)

    custom.send(sender=None)
    for attempt in (1, 2):
        [task] = queued_tasks()
        purge()
        with pytest.raises(TimeoutException):
            run_within_a_second(run_call, *task["args"])
        [row] = OutboxCall.objects.all()
        assert (row.state, row.attempts) == (OutboxCall.State.FAILED, attempt)
        assert "TimeoutException" in row.error
        _relay.run(now=timezone.now() + timedelta(hours=1))
    # Out of retries: it stays failed, and the relay sends it no more.
    assert runs == ["run", "run"]
    assert row.due is None
    assert queued_tasks() == []


def test_a_batch_without_the_outbox_sends_the_calls_after_the_cut_again(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    @connect(custom, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        runs.append(n)
        if n == 0 and runs.count(0) == 1:
            time.sleep(OUTLIVE)

    task = taken_batch(3)
    with pytest.raises(
        TimeoutException, match="calls 2, 3 did not run and were sent again"
    ):
        run_within_a_second(run_batch, *task["args"])
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "call 1 of 3 was cut short" in error.getMessage()
    assert "calls 2, 3 did not run and were sent again" in error.getMessage()

    run_queued()
    assert runs == [0, 1, 2]


@pytest.mark.outbox
def test_the_limit_reached_between_two_calls_stops_the_batch_before_the_next(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from django_q_signals.models import OutboxCall

    runs: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        runs.append(n)
        if n == 0:
            raise ValueError("zero")

    class AlarmWhileLogging(logging.Handler):
        """The limit is reached while the run logs the first failure: in the
        run's own code, outside any handler."""

        def emit(self, record: logging.LogRecord) -> None:
            if "failed" in record.getMessage():
                signal.raise_signal(signal.SIGALRM)

    task = taken_batch(3)
    alarm = AlarmWhileLogging()
    logging.getLogger("django_q_signals").addHandler(alarm)
    try:
        with pytest.raises(TimeoutException) as cut:
            run_within_a_second(run_batch, *task["args"])
    finally:
        logging.getLogger("django_q_signals").removeHandler(alarm)

    assert runs == [0]
    assert "cut short" not in str(cut.value)
    assert "calls 2, 3 did not run and were sent again" in str(cut.value)
    assert [state for state, _, _ in rows()] == [
        OutboxCall.State.FAILED,
        OutboxCall.State.SENT,
        OutboxCall.State.SENT,
    ]
    run_queued()
    assert runs == [0, 1, 2]


def test_the_limit_only_notes_the_time_outside_a_handler() -> None:
    with TimeoutHandler(60):
        worker_handler = signal.getsignal(signal.SIGALRM)
        with TimeLimit() as limit:
            signal.raise_signal(signal.SIGALRM)
            assert limit.reached
            with pytest.raises(TimeoutException):
                limit.check()
            limit.check()  # once: the run stopped there
            with pytest.raises(TimeoutException), limit.handler():
                signal.raise_signal(signal.SIGALRM)
        assert signal.getsignal(signal.SIGALRM) is worker_handler


def test_a_run_with_no_time_limit_is_left_as_it_is() -> None:
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    with TimeLimit() as limit, limit.handler():
        assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    limit.check()


@pytest.mark.outbox
def test_a_worker_stopped_inside_a_batch_leaves_that_call_to_its_claim(
    connect: Connect[Any],
) -> None:
    """A stop (KeyboardInterrupt) is no failure of the call: it runs again
    once its claim expires. The calls after it are sent again at once."""
    from django_q_signals.models import OutboxCall

    runs: list[int] = []

    @connect(custom, outbox=True, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        runs.append(n)
        if n == 0 and runs.count(0) == 1:
            raise KeyboardInterrupt

    task = taken_batch(2)
    with pytest.raises(KeyboardInterrupt):
        run_batch(*task["args"])
    assert [state for state, _, _ in rows()] == [
        OutboxCall.State.RUNNING,
        OutboxCall.State.SENT,
    ]
    run_queued()
    assert runs == [0, 1]
    # Its claim expires: the relay sends it again.
    OutboxCall.objects.update(due=timezone.now() - timedelta(seconds=1))
    _relay.run()
    run_queued()
    assert runs == [0, 1, 0]
    assert not OutboxCall.objects.exists()


def test_a_stop_at_the_last_call_of_a_batch_sends_nothing_again(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(custom, batch=True)
    def handler(n: int, **kwargs: Any) -> None:
        if n == 1:
            raise KeyboardInterrupt

    task = taken_batch(2)
    with pytest.raises(KeyboardInterrupt):
        run_batch(*task["args"])
    assert queued_tasks() == []
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.endswith(": call 2 of 2 was cut short")
