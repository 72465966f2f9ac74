"""Claiming outbox rows: the run of a task takes its calls' rows before it
runs them, so that no other run runs them meanwhile, and records what
became of each: deleted when the handler returned, failed with its error and
next attempt, or given back unstarted.

An ``ordered`` receiver's call that an earlier call of its row holds back
is not claimed: it is marked ``waiting`` here, and ``_order`` sends it when
that call is done. A claim reads the call a row holds where a later call
took the row's place (``_supersede``): the task carries the earlier one.
"""

from __future__ import annotations

import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Case, F, When
from django.utils import timezone

from django_q_signals._outbox import (
    Ref,
    by_alias,
    chunks,
    delete_rows,
    marks,
    table_names,
    unpack,
)

if TYPE_CHECKING:
    from django_q_signals._registry import Receiver

#: Seconds a claim outlasts the task's timeout: Django Q2 stops a task a
#: little after its timeout, not at once.
CLAIM_MARGIN = 5

#: What a claim reads of each row it took; for a row that took a later
#: call's place, that call too.
_CLAIMED_COLUMNS = ("id", "model", "object_pk", "created", "sent", "attempts")


class Claimed(NamedTuple):
    """A row a run claimed, as the claim read it."""

    #: The label and pk of the call's instance, if it has one.
    row: tuple[str, str] | None
    #: On the call's first attempt, the seconds from its commit (when it
    #: was put on the broker after it, or written, if a worker took it
    #: first) to this claim; None on a later attempt.
    waited: float | None
    #: Its attempts, this one included.
    attempts: int
    #: The later call the row holds, having taken its place (``supersede``).
    payload: bytes | None = None


class Claim:
    """The rows one task's run has claimed: nobody else runs them meanwhile."""

    def __init__(self, receiver: Receiver, refs: Iterable[Ref | None]) -> None:
        self._receiver = receiver
        self.token = uuid.uuid4().hex
        now = timezone.now()
        until = now + timedelta(seconds=_claim_seconds(receiver))
        self._claimed: dict[Ref, Claimed] = {}
        #: ``ordered``: per database, the rows (label, pk) whose call ran.
        self.rows_done: dict[str, set[tuple[str, str]]] = defaultdict(set)
        #: Per database: the calls whose handler ran, and those that failed.
        self.runs: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        #: Per database: the pks of the calls whose handler returned.
        self._done: dict[str, list[int]] = defaultdict(list)
        in_order = receiver.keeps_order
        for alias, ids in by_alias(refs):
            claimed = _claim(alias, ids, self.token, now, until, in_order=in_order)
            if in_order and len(claimed) < len(ids):
                # Held back by an earlier call of their row: waiting. Then
                # again, as that call may have finished meanwhile and found
                # nothing waiting to send.
                rest = sorted(set(ids) - set(claimed))
                hold_back(alias, rest)
                claimed |= _claim(alias, rest, self.token, now, until, in_order=True)
            self._claimed.update(((alias, pk), row) for pk, row in claimed.items())

    def holds(self, ref: Ref | None) -> bool:
        """Whether this run may run the call: claimed, or kept in no row."""
        return ref is None or ref in self._claimed

    def call(self, ref: Ref | None, sent: Any) -> Any:
        """The call to run for ``ref``: the later call its row holds, where
        one took the row's place (``supersede``), else the call the task
        carried (``sent``). ValueError if the row holds no call of this
        receiver."""
        claimed = self._claimed.get(ref) if ref else None
        if claimed is None or claimed.payload is None:
            return sent
        name, _, data = unpack(bytes(claimed.payload))
        if name != self._receiver.name:
            raise ValueError(f"its outbox row holds a call of {name}")
        return data

    def waits(self) -> dict[str, list[float]]:
        """Per database: the claimed calls' waits from commit to start, for
        those on their first attempt."""
        waits: dict[str, list[float]] = defaultdict(list)
        for (alias, _), claimed in self._claimed.items():
            if claimed.waited is not None:
                waits[alias].append(claimed.waited)
        return waits

    def succeeded(self, refs: Iterable[Ref | None]) -> None:
        """The handler returned: the calls are done, their rows go when the
        run finishes (``finish``)."""
        for alias, ids in by_alias(ref for ref in refs if ref in self._claimed):
            self.runs[alias] += len(ids)
            self._done[alias] += ids

    def finish(self) -> None:
        """The run is over: per database, one transaction deletes the rows
        of the calls whose handler returned and leaves a record of the run
        for the dashboard (``_history``): its calls run and failed, and
        their waits from commit to start."""
        from django_q_signals import _history

        waits = self.waits()
        for alias in sorted(set(self._done) | set(self.runs) | set(waits)):
            done = self._done.pop(alias, [])
            with transaction.atomic(using=alias):
                if done:
                    if self._receiver.keeps_order:
                        rows = (self._claimed[alias, pk].row for pk in done)
                        self.rows_done[alias].update(row for row in rows if row)
                    delete_rows(alias, done, claim=self.token)
                _history.record(
                    alias,
                    self._receiver.name,
                    runs=self.runs[alias],
                    failures=self.failures[alias],
                    waits=waits.get(alias, []),
                )

    def release(self, refs: Iterable[Ref | None]) -> None:
        """Give back calls this run claimed and did not start: ``queued``
        again, as if never claimed, to be sent again."""
        from django_q_signals.models import OutboxCall

        for alias, ids in by_alias(ref for ref in refs if ref in self._claimed):
            for chunk in chunks(ids):
                OutboxCall.objects.using(alias).filter(pk__in=chunk).release(self.token)

    def failed(self, ref: Ref | None, error: BaseException) -> None:
        """The handler raised: keep the row, with the error and the time of
        the next attempt if any is left."""
        from django_q_signals.models import OutboxCall

        if ref is None or ref not in self._claimed:
            return
        alias, pk = ref
        self.runs[alias] += 1
        self.failures[alias] += 1
        # Unless another run claimed it since (its claim expired).
        rows = OutboxCall.objects.using(alias).filter(pk=pk)
        text = "".join(traceback.format_exception(error)).strip()
        attempts = self._claimed[ref].attempts
        rows.mark_failed(self.token, text, _next_attempt(self._receiver, attempts))


def _claim(
    alias: str,
    ids: list[int],
    token: str,
    now: datetime,
    until: datetime,
    *,
    in_order: bool = False,
) -> dict[int, Claimed]:
    """Claim the rows no live run has, until ``until``: plain UPDATEs of at
    most PKS_AT_MOST pks, in autocommit, which return what they claimed
    where the database can (PostgreSQL, SQLite), and are followed by a
    SELECT of it elsewhere. ``in_order``: only rows with no earlier call of
    their receiver for their row. The rows claimed, by pk, each with the
    later call it holds, if one took its place (``supersede``: whatever the
    receiver's option says now, as another process may have settled it)."""
    from django_q_signals.models import OutboxCall

    connection = connections[alias]
    can_read_itself = connection.features.update_can_self_select
    if in_order and not can_read_itself:  # pragma: no cover (MySQL; MariaDB can)
        # Its UPDATE cannot read its own table: the waiting ones first.
        ids = sorted(set(ids) - set(_held_back_by_earlier(alias, ids)))
        in_order = False
    returning = _returns_rows(connection)
    when = connection.ops.adapt_datetimefield_value
    found: list[tuple[Any, ...]] = []
    with connection.cursor() as cursor:
        for chunk in chunks(ids):
            sql, params = _claim_statement(
                connection,
                len(chunk),
                in_order=in_order,
                returning=returning,
            )
            cursor.execute(sql, [when(until), token, *chunk, *params, when(now)])
            if returning:
                found += cursor.fetchall()
    if not returning:  # pragma: no cover (MariaDB, MySQL)
        ours = OutboxCall.objects.using(alias).filter(claim=token)
        for chunk in chunks(ids):
            rows = ours.filter(pk__in=chunk).annotate(held=_held_call())
            found += rows.values_list(*_CLAIMED_COLUMNS, "held")
    read_time = _datetime_reader(connection)
    return {
        pk: Claimed(
            (model_label, object_pk) if model_label else None,
            _waited(now, read_time(sent) or read_time(created))
            if attempts == 1
            else None,
            attempts,
            payload,
        )
        for pk, model_label, object_pk, created, sent, attempts, payload in found
    }


def _waited(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max((now - since).total_seconds(), 0.0)


def _returns_rows(connection: Any) -> bool:
    """Whether an UPDATE on ``connection`` can return the rows it changed:
    PostgreSQL's, and SQLite's from 3.35; not MariaDB's or MySQL's."""
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite"
        and bool(connection.features.can_return_columns_from_insert)
    )


def _datetime_reader(connection: Any) -> Any:
    """How to read a datetime a raw cursor gave: SQLite gives text, naive
    where Django keeps times in UTC."""
    if connection.vendor != "sqlite":
        return lambda value: value

    def read(value: Any) -> datetime | None:
        if value is None:
            return None
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return (
            timezone.make_aware(parsed, dt_timezone.utc) if settings.USE_TZ else parsed
        )

    return read


def _claim_statement(
    connection: Any,
    count: int,
    *,
    in_order: bool,
    returning: bool = False,
) -> tuple[str, list[str]]:
    """The UPDATE claiming ``count`` rows, and its parameters between the
    pks and the time: it takes the claim's end, its token, the pks, those,
    and the time now. ``returning``: it returns the _CLAIMED_COLUMNS of the
    rows it claimed, and the call of each that holds a later one."""
    from django_q_signals.models import OutboxCall

    table, column = table_names(connection)
    state, due, attempts = column("state"), column("due"), column("attempts")
    at_once, when_due = OutboxCall.CLAIMABLE, OutboxCall.CLAIMABLE_WHEN_DUE
    claimable = (
        f"({state} IN ({marks(at_once)}) "
        f"OR ({state} IN ({marks(when_due)}) AND {due} <= %s))"
    )
    if in_order:
        claimable += f" AND NOT EXISTS ({_earlier_call_sql(connection)})"
    sql = (
        f"UPDATE {table} SET {state} = '{OutboxCall.State.RUNNING.value}', "
        f"{due} = %s, {column('claim')} = %s, {attempts} = {attempts} + 1, "
        f"{column('progress_done')} = NULL, {column('progress_total')} = NULL, "
        f"{column('progress_note')} = '' "
        f"WHERE {column('id')} IN ({marks(['%s'] * count)}) AND {claimable}"
    )
    if returning:
        # Not "IS NULL": SQLite 3.40 gets it wrong in RETURNING.
        sql += (
            f" RETURNING {', '.join(map(column, _CLAIMED_COLUMNS))}, "
            f"CASE WHEN COALESCE({column('payload_of')}, 0) > 0 "
            f"THEN {column('payload')} END"
        )
    return sql, [state.value for state in (*at_once, *when_due)]


def _held_call() -> Case:  # pragma: no cover (MariaDB, MySQL)
    """The call a row holds, where it took a later call's place."""
    from django_q_signals.models import OutboxCall

    return Case(
        When(payload_of__isnull=False, then=F("payload")),
        output_field=OutboxCall._meta.get_field("payload"),
    )


def _earlier_call_sql(connection: Any) -> str:
    """A SELECT of the calls of the outer row's receiver for its row written
    before it: any of them keeps an ``ordered`` call from running."""
    table, column = table_names(connection)
    earlier = connection.ops.quote_name("earlier")
    same = " AND ".join(
        f"{earlier}.{column(name)} = {table}.{column(name)}"
        for name in ("receiver", "model", "object_pk")
    )
    return (
        f"SELECT 1 FROM {table} {earlier} WHERE {same} "
        f"AND {earlier}.{column('id')} < {table}.{column('id')} "
        f"AND {earlier}.{column('model')} <> ''"
    )


def _held_back_by_earlier(alias: str, ids: list[int]) -> list[int]:  # pragma: no cover
    """Of the rows ``ids``, those an earlier call of their row holds back
    (MySQL, whose UPDATE cannot read its own table)."""
    from django_q_signals.models import OutboxCall

    return [
        pk
        for chunk in chunks(ids)
        for pk in OutboxCall.objects.using(alias)
        .filter(pk__in=chunk)
        .held_back()
        .values_list("pk", flat=True)
    ]


def hold_back(alias: str, ids: list[int]) -> None:
    """Mark ``waiting`` the rows of ``ids`` not started that an earlier call of
    their row holds back."""
    from django_q_signals.models import OutboxCall

    for chunk in chunks(ids):
        rows = OutboxCall.objects.using(alias).filter(
            pk__in=chunk, state__in=[OutboxCall.State.QUEUED, OutboxCall.State.SENT]
        )
        rows.held_back().update(state=OutboxCall.State.WAITING, due=None)


def _claim_seconds(receiver: Receiver) -> float:
    """How long a claim lasts: the task's timeout, or Django Q2's ``retry``."""
    from django_q.conf import Conf

    timeout = receiver.task_options().get("timeout", Conf.TIMEOUT)
    if timeout is None:
        timeout = Conf.RETRY
    return float(timeout) + CLAIM_MARGIN


def _next_attempt(receiver: Receiver, attempts: int) -> Any:
    """When a call that failed ``attempts`` times runs again, or None."""
    if attempts > receiver.retries:
        return None
    backoff = receiver.retry_backoff or 0
    return timezone.now() + timedelta(seconds=backoff * 2 ** (attempts - 1))
