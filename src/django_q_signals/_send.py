"""Sending calls to Django Q2's broker: grouped into tasks (one call each,
or a batch), signed as Django Q2 signs them, and written together, with
their outbox rows marked sent.

``_commit`` hands the calls of a commit here; the relay and the worker send
calls again through here too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from django_q_signals import _brokers, _outbox
from django_q_signals._payload import batch_payload

if TYPE_CHECKING:
    from django_q_signals._payload import Call
    from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")

#: The calls one task carries: one call, or a batch of one receiver's calls.
TaskCalls = list["Call"]

#: The functions a worker runs for a task: one call, or a batch of calls.
TASK = "django_q_signals.worker.run_call"
BATCH_TASK = "django_q_signals.worker.run_batch"
#: Tasks signed before they are written: what the request process holds at
#: once while it sends a large commit's tasks.
WRITE_AT_MOST = 1000

#: Where ``django_q_signals.testing`` sends calls instead of the broker; the
#: last one added wins.
diversions: list[Callable[[list[Call]], None]] = []


def send(
    calls: list[Call], *, raise_errors: bool = False, resent: bool = False
) -> None:
    """Put ``calls`` on their brokers, in firing order, one write per broker
    for each run of calls not split by a task that runs in sync mode (and
    of at most WRITE_AT_MOST tasks), and mark the outbox rows of those
    written as sent.

    Unless ``raise_errors``, a failure is logged with every call it concerns
    and not raised: the caller's transaction has already committed. Calls
    with an outbox row stay in the outbox, for the relay. ``resent``: the
    relay sends them again, from whatever state its locked rows are in.
    """
    if diversions:
        diversions[-1](calls)
        return
    from django_q.conf import Conf

    writes = _Writes(raise_errors=raise_errors, resent=resent)
    for task_calls in split_into_tasks(calls):
        options = task_calls[0].receiver.task_options()
        func, args = task_function(task_calls)
        if options.get("sync", Conf.SYNC):
            # The calls before it go first. Then Django Q2 runs the task here
            # and now, and its errors reach the caller, as from async_task.
            from django_q.tasks import async_task

            writes.write()
            async_task(func, *args, q_options=options)
            continue
        destination = _brokers.destination(options)
        options.pop("broker", None)  # An object: never in the signed task.
        try:
            pack = _sign(func, args, options)
        except Exception:
            if raise_errors:
                raise
            logger.exception("Could not queue %s", describe(task_calls))
            continue
        writes.add(destination, task_calls, pack)
    writes.write()


class _Writes:
    """Signed tasks waiting to be written, by destination: each destination's
    written together, once WRITE_AT_MOST are waiting or when asked."""

    def __init__(self, *, raise_errors: bool, resent: bool) -> None:
        self.raise_errors = raise_errors
        self.resent = resent
        self.waiting: dict[Any, list[tuple[TaskCalls, str]]] = {}
        self.count = 0

    def add(self, destination: Any, task_calls: TaskCalls, pack: str) -> None:
        self.waiting.setdefault(destination, []).append((task_calls, pack))
        self.count += 1
        if self.count == WRITE_AT_MOST:
            self.write()

    def write(self) -> None:
        """Write the waiting tasks: one write per destination."""
        waiting, self.waiting, self.count = self.waiting, {}, 0
        _write(waiting, raise_errors=self.raise_errors, resent=self.resent)


def _write(
    writes: dict[Any, list[tuple[TaskCalls, str]]],
    *,
    raise_errors: bool,
    resent: bool,
) -> None:
    for destination, items in writes.items():
        tasks = [task_calls for task_calls, _ in items]
        calls = [call for task_calls in tasks for call in task_calls]
        try:
            _brokers.write(destination, [pack for _, pack in items], calls)
        except Exception as exc:
            if raise_errors:
                raise
            # A broker cooling down says why; anything else has a traceback.
            cooling = isinstance(exc, _brokers.BrokerUnavailable)
            logger.error(
                "Could not queue %d task(s)%s: %s; %s",
                len(tasks),
                f" ({exc})" if cooling else "",
                "; ".join(map(describe, tasks)),
                _fate(tasks),
                exc_info=not cooling,
            )
        else:
            _outbox.mark_sent(calls, resent=resent)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Queued %s", "; ".join(map(describe, tasks)))


def _fate(tasks: list[TaskCalls]) -> str:
    """What becomes of calls that could not be queued."""
    calls = [call for task_calls in tasks for call in task_calls]
    kept = sum(1 for call in calls if call.outbox_id is not None)
    total = len(calls)
    if kept == total:
        return "they stay in the outbox, and the relay sends them later"
    if kept:
        return f"{kept} of {total} calls stay in the outbox; the others are lost"
    return "they are lost"


def split_into_tasks(calls: list[Call]) -> list[TaskCalls]:
    """The calls of each task for ``calls``, in firing order: one call each,
    or a batch of one receiver's calls on one database."""
    tasks: list[TaskCalls] = []
    batches: dict[tuple[Receiver, str], list[Call]] = {}
    sizes: dict[Receiver, int] = {}
    for call in calls:
        receiver = call.receiver
        if not receiver.is_batched:
            tasks.append([call])
            continue
        if receiver not in sizes:
            sizes[receiver] = receiver.batch_size
        batch = batches.get((receiver, call.alias))
        if batch is None or len(batch) == sizes[receiver]:
            batch = batches[receiver, call.alias] = []
            tasks.append(batch)
        batch.append(call)
    return tasks


def task_function(task_calls: TaskCalls) -> tuple[str, tuple[Any, ...]]:
    """The function a worker runs for a task of ``task_calls``, and its
    arguments: the payload, and where the calls' outbox rows are if they
    have any."""
    refs = _outbox.refs(task_calls)
    if task_calls[0].receiver.is_batched:
        payload = batch_payload(task_calls)
        return BATCH_TASK, (payload,) if refs is None else (payload, refs)
    payload = task_calls[0].payload()
    return TASK, (payload,) if refs is None else (payload, refs[0])


def describe(task_calls: TaskCalls) -> str:
    return ", ".join(str(call) for call in task_calls)


def _sign(func: str, args: tuple[Any, ...], options: dict[str, Any]) -> str:
    """The task as Django Q2's ``async_task`` builds and signs it."""
    from django_q.conf import Conf
    from django_q.signals import pre_enqueue
    from django_q.signing import SignedPackage

    task = {
        "id": uuid.uuid4().hex,
        "name": options.pop("task_name"),
        "func": func,
        "args": args,
        **options,
    }
    if "cached" not in task and Conf.CACHED:
        task["cached"] = Conf.CACHED
    if "ack_failure" not in task and Conf.ACK_FAILURES:
        task["ack_failure"] = Conf.ACK_FAILURES
    task["kwargs"] = {}
    task["started"] = timezone.now()
    pre_enqueue.send(sender="django_q", task=task)
    # Compressed where that makes it smaller (a batch's calls are much alike);
    # a worker reads it whatever its own settings say.
    return str(SignedPackage.dumps(task, compressed=True))
