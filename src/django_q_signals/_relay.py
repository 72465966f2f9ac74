"""The relay: sends again the outbox calls that did not make it.

It sends calls still ``queued`` ``OUTBOX_RELAY_AFTER`` seconds after they
were written (the process died between the commit and the broker, or the
broker was down), calls ``sent`` that long ago while their broker holds no
task (a worker took the task and died before running it: Redis takes no
delivery receipts), calls whose claim expired (a worker died inside the
handler), and failed calls whose next attempt is due.

Every database alias with the outbox table is scanned, a bounded number of
rows at a time, each chunk in a transaction that locks its rows
(``select_for_update(skip_locked=True)`` where the database has it), so
relays in several processes share the work. A call sent twice runs once:
the worker claims it first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from django_q_signals import _brokers, _conf, _outbox, _send
from django_q_signals._payload import Call
from django_q_signals._registry import get_receiver

if TYPE_CHECKING:
    from django_q_signals.models import OutboxCallQuerySet

logger = logging.getLogger("django_q_signals")

#: Rows read and sent at a time.
CHUNK = 500


def run(*, now: datetime | None = None, everything: bool = False) -> int:
    """Send the due calls of every alias; how many were sent.

    ``everything`` sends every call not running under a live claim, due or
    not (``manage.py qsignals relay --all``).
    """
    from django_q_signals.models import OutboxCall

    now = now or timezone.now()
    sent = 0
    emptiness: dict[Any, bool] = {}
    for alias in aliases():
        rows = OutboxCall.objects.using(alias)
        try:
            sent += send_again(
                rows if everything else _due(rows, now, emptiness), now=now
            )
        except DatabaseError as exc:
            _unreachable(alias, exc)
    if sent:
        logger.info("Relay: sent %d outbox call(s) again", sent)
    return sent


def send_again(rows: OutboxCallQuerySet, *, now: datetime | None = None) -> int:
    """Send these outbox calls to the broker again, a chunk at a time, but
    those a worker is running under a live claim; how many were sent."""
    now = now or timezone.now()
    rows = rows.without_live_claims(now).order_by("pk")
    sent = last = 0
    while True:
        count, last = _send_chunk(rows.filter(pk__gt=last))
        sent += count
        if last == 0:
            return sent


def aliases() -> list[str]:
    """The database aliases that have the outbox table."""
    from django_q_signals.models import OutboxCall

    found = []
    for alias in connections:
        if not router.allow_migrate_model(alias, OutboxCall):
            continue
        try:
            if _outbox.has_table(alias):
                found.append(alias)
        except DatabaseError as exc:
            _unreachable(alias, exc)
    return found


def _unreachable(alias: str, error: DatabaseError) -> None:
    """A database that fails is skipped: the others' calls are still sent."""
    logger.error(
        "Relay: the database %r could not be read (%s: %s); its outbox calls "
        "are sent at a later run",
        alias,
        type(error).__name__,
        error,
    )
    # A broken connection would fail again at the next run: start afresh.
    connections[alias].close_if_unusable_or_obsolete()


def _send_chunk(rows: OutboxCallQuerySet) -> tuple[int, int]:
    """Send the first chunk of ``rows``: how many were sent, and the last pk
    read (0 when none was left)."""
    alias = rows.db
    with transaction.atomic(using=alias):
        rows = rows.only("pk", "payload")
        if connections[alias].features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        chunk = list(rows[:CHUNK])
        if not chunk:
            return 0, 0
        calls = [
            call for row in chunk if (call := _stored_call(row, alias)) is not None
        ]
        # Inside the transaction: its rows stay locked until they are on the
        # broker and marked sent (with the ORM broker on this database, in
        # the same commit).
        _send.send(calls, resent=True)
        return len(calls), chunk[-1].pk


def _due(
    rows: OutboxCallQuerySet, now: datetime, emptiness: dict[Any, bool]
) -> OutboxCallQuerySet:
    """Which of ``rows`` are due: those due in themselves, and those sent a
    while ago whose broker holds no task. ``emptiness``: whether each broker
    was found empty, kept across the databases of one run."""
    waited = now - timedelta(seconds=_conf.get().outbox_relay_after)
    unstarted = rows.unstarted(sent_before=waited)
    names = unstarted.values_list("receiver", flat=True).distinct()
    idle = unstarted.filter(receiver__in=_idle_receivers(names, emptiness))
    return rows.due(now, written_before=waited) | idle


def _idle_receivers(names: Iterable[str], emptiness: dict[Any, bool]) -> list[str]:
    """Of the receivers named, those whose broker holds no task for their
    cluster: a call of theirs sent some time ago and not started is not on
    the way. Each is looked up, its module imported if need be: a worker
    process may not have imported it yet."""
    idle = []
    for name in names:
        receiver = get_receiver(name)
        if receiver is None:
            continue  # Its calls wait; sending them would say so.
        options = receiver.task_options()
        destination = _brokers.destination(options)
        if destination not in emptiness:
            emptiness[destination] = _broker_is_empty(destination)
        if emptiness[destination]:
            idle.append(name)
    return idle


def _broker_is_empty(destination: Any) -> bool:
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if not isinstance(destination, (str, type(None))):  # A broker object.
        return bool(destination.queue_size() == 0)
    key = _brokers.queue_key(destination)
    if _brokers.is_orm(destination):
        # Taken tasks too: the ORM broker gives them out again itself. But
        # not the task running this relay, which the broker holds until it
        # ends.
        waiting = OrmQ.objects.using(Conf.ORM).filter(key=key)
        if _running_task is not None:
            waiting = waiting.exclude(pk=_running_task)
        return not waiting.exists()
    try:
        broker = _brokers.get_broker(key)
        return bool(broker.queue_size() == 0)
    except Exception:
        logger.warning("Relay: could not ask the broker for %r how full it is", key)
        return False


#: The ORM broker's id of the task this worker process is running.
_running_task: Any = None


def note_running_task(task: dict[str, Any], **kwargs: Any) -> None:
    """Connected to Django Q2's ``pre_execute``: which task runs here now."""
    global _running_task
    _running_task = task.get("ack_id")


_unknown_told: set[str] = set()


def _stored_call(row: Any, alias: str) -> Call | None:
    """The call an outbox row keeps, if this process knows its receiver."""
    try:
        name, call_alias, data = _outbox.unpack(bytes(row.payload))
    except ValueError as exc:
        # Named as `manage.py qsignals discard` takes it.
        logger.error("Relay: outbox row %s:%s holds no call: %s", alias, row.pk, exc)
        return None
    receiver = get_receiver(name)
    if receiver is None:
        if name not in _unknown_told:
            _unknown_told.add(name)
            logger.error(
                "Relay: no async receiver %r in this process; its outbox calls wait",
                name,
            )
        return None
    return Call(receiver, call_alias, data, outbox_id=row.pk)
