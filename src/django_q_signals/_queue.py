"""Putting calls on the Django Q2 broker: at once, or when the transaction commits.

Calls deferred to a commit are sent together: Django Q2 builds and signs each
task as usual, then all of one commit's tasks for a broker go over in one
write (one ``bulk_create`` for the ORM broker, one ``RPUSH`` for Redis).
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.utils import timezone

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django_q.brokers import Broker

    from django_q_signals._payload import Call
    from django_q_signals._receivers import Receiver

logger = logging.getLogger("django_q_signals")

#: The tasks queued calls run in the worker: one call, or a batch of calls.
TASK = "django_q_signals.worker.run_receiver"
BATCH_TASK = "django_q_signals.worker.run_batch"

#: Where ``django_q_signals.testing`` sends calls instead of the broker; the
#: last one added wins.
diversions: list[Callable[[list[Call]], None]] = []


def queue_call(call: Call) -> None:
    if not call.receiver.waits_for_commit:
        send([call], raise_errors=True)
        return
    connection = transaction.get_connection(call.alias)
    if connection.in_atomic_block:
        _defer(connection, call)
    else:
        send([call])


def send(calls: list[Call], *, raise_errors: bool = False) -> None:
    """Put ``calls`` on their brokers, one write per broker.

    Unless ``raise_errors``, a failure is logged with every call it concerns
    and not raised: the caller's transaction has already committed.
    """
    if diversions:
        diversions[-1](calls)
        return
    from django_q.conf import Conf
    from django_q.tasks import async_task

    writes: dict[Any, list[tuple[list[Call], str]]] = {}
    for task in group_tasks(calls):
        receiver = task[0].receiver
        options = receiver.task_options()
        destination = options.pop("broker", None) or options.get("cluster")
        collector = _Collector()
        options["broker"] = collector
        payload: bytes | tuple[bytes, ...]
        if receiver.batch is False:
            func, payload = TASK, task[0].payload
        else:
            func, payload = BATCH_TASK, tuple(call.payload for call in task)
        # In sync mode Django Q2 runs the task here and now: let the
        # handler's errors reach the caller, as Django Q2 does.
        sync = options.get("sync", Conf.SYNC)
        try:
            async_task(func, payload, q_options=options)
        except Exception:
            if raise_errors or sync:
                raise
            logger.exception("Could not queue %s", _describe(task))
            continue
        if sync:
            continue
        writes.setdefault(destination, []).append((task, collector.pack))
    for destination, items in writes.items():
        try:
            _write(destination, items)
        except Exception:
            if raise_errors:
                raise
            logger.exception(
                "Could not queue %d task(s), they are lost: %s",
                len(items),
                "; ".join(_describe(task) for task, _ in items),
            )
        else:
            if logger.isEnabledFor(logging.DEBUG):
                tasks = "; ".join(_describe(task) for task, _ in items)
                logger.debug("Queued %s", tasks)


def group_tasks(calls: list[Call]) -> list[list[Call]]:
    """The tasks for ``calls``, in firing order: one call each, or a batch."""
    tasks: list[list[Call]] = []
    batches: dict[Receiver, list[Call]] = {}
    sizes: dict[Receiver, int] = {}
    for call in calls:
        receiver = call.receiver
        if receiver.batch is False:
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


def _describe(task: list[Call]) -> str:
    return ", ".join(str(call) for call in task)


class _Collector:
    """Stands in for the broker so Django Q2 builds the task but we send it."""

    list_key = "django_q_signals"

    def __init__(self) -> None:
        self.pack = ""

    def enqueue(self, pack: str) -> None:
        self.pack = pack


def _write(destination: Any, items: list[tuple[list[Call], str]]) -> None:
    from django_q.conf import Conf

    packs = [pack for _, pack in items]
    calls = [call for task, _ in items for call in task]
    if destination is not None and not isinstance(destination, str):
        for pack in packs:
            destination.enqueue(pack)
        return
    key = destination or Conf.CLUSTER_NAME
    if Conf.ORM and not (Conf.BROKER_CLASS or Conf.IRON_MQ or Conf.SQS):
        # Written directly rather than through the ORM broker, which closes
        # idle connections (and with them other aliases' open transactions)
        # each time it is created or enqueues.
        from django_q.models import OrmQ

        now = timezone.now()
        rows = [OrmQ(key=key, payload=pack, lock=now) for pack in packs]
        committed = any(not _in_transaction(call.alias) for call in calls)
        broker_db = transaction.get_connection(Conf.ORM)
        if not (committed and broker_db.in_atomic_block):
            OrmQ.objects.using(Conf.ORM).bulk_create(rows)
        elif broker_db.vendor != "sqlite":
            # These calls' transaction has committed, but one is open on the
            # broker's database: its rollback must not take them back.
            with _separate_connection(Conf.ORM):
                OrmQ.objects.using(Conf.ORM).bulk_create(rows)
        else:
            # SQLite has one writer at a time: a second connection would wait
            # for the open transaction, so the calls join it.
            logger.warning(
                "Queued %s inside the open transaction on %r (the ORM broker's "
                "SQLite database): they are lost if it rolls back.",
                ", ".join(map(str, calls)),
                Conf.ORM,
            )
            OrmQ.objects.using(Conf.ORM).bulk_create(rows)
        return
    broker = _broker(key)
    redis_broker = sys.modules.get("django_q.brokers.redis_broker")
    if redis_broker is not None and isinstance(broker, redis_broker.Redis):
        broker.connection.rpush(broker.list_key, *packs)
    else:
        for pack in packs:
            broker.enqueue(pack)


def _in_transaction(alias: str) -> bool:
    return bool(transaction.get_connection(alias).in_atomic_block)


@contextmanager
def _separate_connection(alias: str) -> Iterator[None]:
    """Point ``alias`` at a new connection, in autocommit, for this block."""
    original = connections[alias]
    separate = connections.create_connection(alias)
    connections[alias] = separate
    try:
        yield
    finally:
        connections[alias] = original
        separate.close()


_brokers: dict[str, Broker] = {}


def _broker(key: str) -> Broker:
    """A broker per queue, kept: creating one opens a new connection pool."""
    broker = _brokers.get(key)
    if broker is None:
        from django_q.brokers import get_broker

        broker = _brokers[key] = get_broker(key)
    return broker


# Deferring to the commit. Each call is its own on_commit callback, so Django
# drops it exactly when it drops the savepoint the signal fired in. The
# callbacks hand their calls to the connection's buffer; the last one
# registered sends them all. Django never drops a callback registered outside
# every savepoint, so when a call is deferred inside one, a sending callback
# with no savepoint follows it.


class _Buffer:
    __slots__ = ("__weakref__", "generation", "ready")

    def __init__(self) -> None:
        self.ready: list[Call] = []
        self.generation = 0


class _Send:
    __slots__ = ("buffer", "generation")

    def __init__(self, buffer: _Buffer) -> None:
        buffer.generation += 1
        self.buffer = buffer
        self.generation = buffer.generation

    def __call__(self) -> None:
        buffer = self.buffer
        if self.generation == buffer.generation:
            calls, buffer.ready = buffer.ready, []
            send(calls)


class _Deferred(_Send):
    __slots__ = ("call",)

    def __init__(self, buffer: _Buffer, call: Call) -> None:
        super().__init__(buffer)
        self.call = call

    def __call__(self) -> None:
        self.buffer.ready.append(self.call)
        super().__call__()


_buffers: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _Buffer] = (
    weakref.WeakKeyDictionary()
)


def _defer(connection: BaseDatabaseWrapper, call: Call) -> None:
    buffer = _buffers.get(connection)
    if buffer is None:
        buffer = _buffers[connection] = _Buffer()
    connection.on_commit(_Deferred(buffer, call))
    if connection.savepoint_ids:
        # Django's own captureOnCommitCallbacks reads this list too.
        # (The stubs predate the third item, robust.)
        connection.run_on_commit.append((set(), _Send(buffer), False))  # type: ignore[arg-type]
