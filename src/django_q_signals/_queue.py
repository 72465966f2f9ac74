"""Queuing calls: at once, or when the transaction on their database commits.

Deferred calls are kept in groups, each group one ``on_commit`` callback, so
that Django itself decides when each call is sent: it drops a group with the
savepoint it was registered in, runs groups in registration order with the
other callbacks, and stops at a callback that raises. A call joins the last
group only where that changes none of this: the group is still the last
callback on the connection, and would be dropped by exactly the savepoint
rollbacks that would drop the call's own callback. Each group sends its calls
in one write per broker.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from django_q_signals import _brokers, _outbox

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from django_q_signals._payload import Call
    from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")

#: The functions a worker runs for a task: one call, or a batch of calls.
TASK = "django_q_signals.worker.run_receiver"
BATCH_TASK = "django_q_signals.worker.run_batch"

#: Where ``django_q_signals.testing`` sends calls instead of the broker; the
#: last one added wins.
diversions: list[Callable[[list[Call]], None]] = []


def queue_call(call: Call) -> None:
    if call.receiver.uses_outbox:
        # Kept with the data; sent at the commit like any call.
        _outbox.write(call)
    elif not call.receiver.waits_for_commit:
        send([call], raise_errors=True)
        return
    connection = transaction.get_connection(call.alias)
    if connection.in_atomic_block:
        _defer(connection, call)
    else:
        send([call])


def send(calls: list[Call], *, raise_errors: bool = False) -> None:
    """Put ``calls`` on their brokers, one write per broker, and mark the
    outbox rows of those written as sent.

    Unless ``raise_errors``, a failure is logged with every call it concerns
    and not raised: the caller's transaction has already committed. Calls
    with an outbox row stay in the outbox, for the relay.
    """
    if diversions:
        diversions[-1](calls)
        return
    from django_q.conf import Conf

    writes: dict[Any, list[tuple[list[Call], str]]] = {}
    for task in group_tasks(calls):
        options = task[0].receiver.task_options()
        func, args = task_call(task)
        if options.get("sync", Conf.SYNC):
            # Django Q2 runs the task here and now; its errors reach the
            # caller, as they do from async_task.
            from django_q.tasks import async_task

            async_task(func, *args, q_options=options)
            continue
        destination = options.pop("broker", None) or options.get("cluster")
        try:
            pack = _sign(func, args, options)
        except Exception:
            if raise_errors:
                raise
            logger.exception("Could not queue %s", describe(task))
            continue
        writes.setdefault(destination, []).append((task, pack))
    for destination, items in writes.items():
        tasks = [task for task, _ in items]
        try:
            _brokers.write(destination, [pack for _, pack in items], tasks)
        except _brokers.BrokerUnavailable as exc:
            if raise_errors:
                raise
            logger.error(
                "Could not queue %d task(s), they are lost (%s): %s",
                len(tasks),
                exc,
                "; ".join(map(describe, tasks)),
            )
        except Exception:
            if raise_errors:
                raise
            logger.exception(
                "Could not queue %d task(s), they are lost: %s",
                len(tasks),
                "; ".join(map(describe, tasks)),
            )
        else:
            _outbox.mark_sent(call for task in tasks for call in task)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Queued %s", "; ".join(map(describe, tasks)))


def group_tasks(calls: list[Call]) -> list[list[Call]]:
    """The tasks for ``calls``, in firing order: one call each, or a batch."""
    tasks: list[list[Call]] = []
    batches: dict[Receiver, list[Call]] = {}
    sizes: dict[Receiver, int] = {}
    for call in calls:
        receiver = call.receiver
        if not receiver.is_batched:
            tasks.append([call])
            continue
        if receiver not in sizes:
            sizes[receiver] = receiver.batch_size
        batch = batches.get(receiver)
        if batch is None or len(batch) == sizes[receiver]:
            batch = batches[receiver] = []
            tasks.append(batch)
        batch.append(call)
    return tasks


def task_call(task: list[Call]) -> tuple[str, tuple[Any, ...]]:
    """The function a worker runs for ``task``, and its arguments: the
    payloads, and where their outbox rows are if they have any."""
    refs = _outbox.refs(task)
    if task[0].receiver.is_batched:
        payloads = tuple(call.payload for call in task)
        return BATCH_TASK, (payloads,) if refs is None else (payloads, refs)
    return TASK, (task[0].payload,) if refs is None else (task[0].payload, refs[0])


def describe(task: list[Call]) -> str:
    return ", ".join(str(call) for call in task)


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
    return str(SignedPackage.dumps(task))


class _Group:
    """One ``on_commit`` callback: calls deferred one after the other."""

    __slots__ = ("calls", "open", "previous", "savepoints")

    def __init__(
        self, call: Call, savepoints: frozenset[str], previous: _Group | None
    ) -> None:
        self.calls = [call]
        #: Whether calls may still join it: not once it ran.
        self.open = True
        # The savepoints open when it was registered: Django drops it when
        # one of them rolls back.
        self.savepoints = savepoints
        # The group registered just before it, with no callback in between.
        self.previous = previous

    def __call__(self) -> None:
        calls, self.calls = self.calls, []
        self.open, self.previous = False, None
        if calls:
            send(calls)

    def take_earlier_calls(self, open_savepoints: frozenset[str]) -> None:
        """Take over the calls of the open groups just before this one, where
        Django would now drop them exactly when it drops this one.

        A released savepoint can no longer roll back, so once the savepoints
        that set two neighbouring groups apart are released, one callback
        can carry both groups' calls (imports that use ``get_or_create`` or
        ``update_or_create`` open a savepoint per row).
        """
        previous = self.previous
        if previous is None:
            return
        own = self.savepoints & open_savepoints
        while (
            previous is not None
            and previous.open
            and previous.savepoints & open_savepoints == own
        ):
            previous.calls.extend(self.calls)
            self.calls, previous.calls = previous.calls, []
            previous = previous.previous
        self.previous = previous


def _defer(connection: BaseDatabaseWrapper, call: Call) -> None:
    open_savepoints = frozenset(filter(None, connection.savepoint_ids))
    hooks = connection.run_on_commit
    last = hooks[-1][1] if hooks else None
    if getattr(connection.atomic_blocks[-1], "_from_testcase", False):
        # Only the transaction a TestCase wraps each test in is open: where
        # this code would run in autocommit, each call is sent on its own. A
        # callback per call keeps captureOnCommitCallbacks exact too.
        last = None
    elif isinstance(last, _Group) and last.open:
        last.take_earlier_calls(open_savepoints)
        if last.savepoints & open_savepoints == open_savepoints:
            last.calls.append(call)
            return
    else:
        last = None
    connection.on_commit(_Group(call, open_savepoints, last))
