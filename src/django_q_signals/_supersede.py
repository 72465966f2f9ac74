"""``supersede=True``: a receiver's newer call for a row takes the place of
its calls for that row that have not started.

Within one commit, only each row's last call is sent.
After the commit, before they are sent, ``settle`` compares the calls with
their receiver's other calls for their rows, on each database:

- a call that a newer one already replaces (on the broker or waiting: it
  starts after this commit, so it reads what the commit wrote) is not sent,
  and its row goes, with the row's older calls not started (this commit's
  earlier calls for the row among them);
- where an older call is waiting, or on the broker (sent not long ago, and
  never claimed), the new call takes its place: that row takes the new
  call's payload (``payload_of`` says whose) and the new row goes. No task
  is sent: the one on its way, or the one sent when the calls before it are
  done, runs the newest call, which its worker reads from the row when it
  claims it;
- otherwise the call is sent, and the older calls not started (queued, or
  failed with a retry to come) go.

Each write is checked against the rows as they are when it runs: a call that
started meanwhile is left to finish (the new call is then sent after all),
and a row never takes a call's payload once it holds a newer one's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import Error, connections, transaction
from django.utils import timezone

from django_q_signals import _conf, _relay, _send
from django_q_signals._outbox import chunks, marks, table_names
from django_q_signals._payload import canonical_pk, concrete_label

if TYPE_CHECKING:
    from django_q_signals._payload import Call

logger = logging.getLogger("django_q_signals")

#: What a ``supersede`` call replaces calls of: database, receiver, model
#: label and pk.
Key = tuple[str, str, str, str]


def _latest_calls(calls: list[Call]) -> list[tuple[Call, Key | None]]:
    """``calls`` but those of a ``supersede`` receiver that a later call of
    ``calls`` for the same row replaces (never sent, their rows go when that
    call is settled), each with its key."""
    keys = [key(call) for call in calls]
    # Where each row's last call is.
    last = {key: position for position, key in enumerate(keys) if key is not None}
    return [
        (call, key)
        for position, (call, key) in enumerate(zip(calls, keys, strict=True))
        if key is None or last[key] == position
    ]


def _superseding(calls: list[Call]) -> bool:
    """Whether any of ``calls`` is a ``supersede`` receiver's (each receiver
    asked once)."""
    return any(receiver.supersedes for receiver in {call.receiver for call in calls})


def key(call: Call) -> Key | None:
    """The database, receiver and row whose calls a ``supersede`` receiver's
    call with an outbox row replaces; None for any other call."""
    if call.outbox_id is None or not call.receiver.supersedes:
        return None
    instance = call.instance_pk()
    if instance is None:
        return None
    label, pk = concrete_label(instance[0]), canonical_pk(instance[1])
    return call.alias, call.receiver.name, label, pk


def settle(calls: list[Call]) -> list[Call]:
    """Of a commit's calls, those to send: the latest of each row, without
    those that took an older call's place or that a newer call replaces.
    The rows of the calls they replace are deleted.

    A database that cannot be asked is logged, and its calls are sent as
    they are: the older calls they would replace may run too."""
    if not _superseding(calls):
        return calls
    latest = _latest_calls(calls)
    calls = [call for call, _ in latest]
    if _send.diversions:
        # The testing helpers: every call they take runs when asked to.
        return calls
    keyed: dict[str, list[tuple[Call, Key]]] = defaultdict(list)
    for call, call_key in latest:
        if call_key is not None:
            keyed[call.alias].append((call, call_key))
    if not keyed:
        return calls
    not_sent: set[int] = set()
    for alias, of_alias in keyed.items():
        try:
            try:
                settled = _settle_on(alias, of_alias)
            except Error:
                # Once more, from a fresh look: another commit settling the
                # same rows may have made the database give up (a deadlock).
                settled = _settle_on(alias, of_alias)
        except Error:
            logger.exception(
                "Could not look up the older calls of %d call(s) of supersede "
                "receivers on database %r: they are sent, and their older calls "
                "may run too",
                len(of_alias),
                alias,
            )
            continue
        not_sent.update(map(id, settled.not_sent))
        _send_unblocked(alias, settled.unblocked)
    return [call for call in calls if id(call) not in not_sent]


class _Found(NamedTuple):
    """A call of the receiver for the row, not started, as looked up."""

    id: int
    state: str
    payload_of: int | None

    def newest_call(self) -> int:
        """The call whose payload it holds: its own, or one whose place it took."""
        return self.id if self.payload_of is None else self.payload_of


class _Settled(NamedTuple):
    """What settling the calls on a database did."""

    #: The calls not to send: they took a place, a newer call replaces
    #: them, or their row was sent or deleted meanwhile.
    not_sent: list[Call]
    #: ``ordered``: the waiting rows that took a call, or whose row's older
    #: calls went, to send if nothing holds them back any more.
    unblocked: list[int]


def _settle_on(alias: str, keyed: list[tuple[Call, Key]]) -> _Settled:
    """Settle the calls on ``alias``."""
    from django_q_signals.models import OutboxCall

    State = OutboxCall.State
    on_the_way = (State.SENT.value, State.WAITING.value)
    connection = connections[alias]
    # MySQL's UPDATE cannot read its own table: no call takes another's place.
    can_take_place = bool(connection.features.update_can_self_select)
    found = _find(alias, [call_key for _, call_key in keyed])
    gone: list[Call] = []  # replaced by a newer call already, or sent
    replaced: list[Call] = []  # a newer call replaces it: its row goes
    take_place: list[tuple[Call, int]] = []  # the call, and the older row
    clear: dict[int, Call] = {}  # by id(): its older calls not started go
    waiting: list[int] = []  # ordered: rows that may wait for those
    for call, call_key in keyed:
        own = call.outbox_id
        assert own is not None  # it has a key
        calls = found.get(call_key, [])
        # Calls written before it that hold nothing newer: the commit's own
        # earlier calls for the row among them.
        older = [row for row in calls if row.id != own and row.newest_call() < own]
        mine = [row.state for row in calls if row.id == own]
        if mine != [State.QUEUED]:
            # Its row is gone (a newer call's settling deleted it, and the
            # older ones) or was sent by the relay meanwhile.
            gone.append(call)
            if not mine:
                continue
        elif any(
            row.state in on_the_way and row.newest_call() > own
            for row in calls
            if row.id != own
        ):
            replaced.append(call)
        elif can_take_place and (
            on_its_way := [row.id for row in older if row.state in on_the_way]
        ):
            # The oldest: with ordered, the one the others wait for.
            take_place.append((call, min(on_its_way)))
            if len(older) == 1:
                continue
        if older:
            clear[id(call)] = call
            if call.receiver.keeps_order:
                # Perhaps waiting for calls that go: sent if nothing else
                # holds them back.
                waiting += [row.id for row in calls if row.state == State.WAITING]
    if not (replaced or take_place or clear):
        return _Settled(gone, [])
    # Rows taken in the order of their pks, as by every other settling.
    take_place.sort(key=lambda place: place[1])
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Not worth a wait for the disk. Every claim commits durably
            # before its handler runs, which makes this settling durable
            # first: a crash of the server can lose it only while no handler
            # has acted on it. Lost, the new call is still queued (its own
            # commit was durable) and the relay sends it; the calls it
            # replaced run too.
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
        if connection.features.has_select_for_update:
            writing = {id(call) for call in replaced} | clear.keys()
            writing |= {id(call) for call, _ in take_place}
            keys = [call_key for call, call_key in keyed if id(call) in writing]
            _lock_rows(cursor, connection, keys)
        took = _take_places(cursor, connection, take_place)
        for call, _ in take_place:
            if call.outbox_id in took:
                replaced.append(call)
            else:
                # That call started meanwhile: this one is sent after all.
                clear[id(call)] = call
        rows = sorted(call.outbox_id for call in replaced if call.outbox_id)
        _delete_queued(cursor, connection, rows)
        delete_superseded(alias, clear.values())
    waiting += [
        older
        for call, older in take_place
        if call.receiver.keeps_order and call.outbox_id in took
    ]
    return _Settled(gone + replaced, sorted(set(waiting)))


def _send_unblocked(alias: str, ids: list[int]) -> None:
    """Send those of the rows ``ids`` that wait with nothing left to wait for:
    an ``ordered`` receiver's call that took a waiting call's place, where the
    calls before it were deleted, or finished while this settling held it
    (``_order.send_next`` passes over a row another transaction holds)."""
    from django_q_signals.models import OutboxCall

    try:
        for chunk in chunks(ids):
            rows = OutboxCall.objects.using(alias).filter(pk__in=chunk)
            _relay.send_again(rows.no_longer_held_back())
    except Error:
        logger.exception(
            "Could not send the waiting calls of ordered supersede receivers "
            "that nothing holds back any more, on database %r: the relay sends them",
            alias,
        )


def _delete_queued(cursor: Any, connection: Any, ids: list[int]) -> None:
    """Delete the rows ``ids`` that are still queued."""
    from django_q_signals.models import OutboxCall

    table, column = table_names(connection)
    for chunk in chunks(ids):
        cursor.execute(
            f"DELETE FROM {table} WHERE {column('id')} IN ({marks(chunk)}) "
            f"AND {column('state')} = %s",
            [*chunk, OutboxCall.State.QUEUED.value],
        )


def _by_model(keys: Iterable[Key]) -> list[tuple[str, str, list[str]]]:
    """The receivers and models of ``keys``, each with its rows' pks, in the
    order of the outbox's (receiver, model, object_pk, id) index."""
    pks: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, receiver_name, label, pk in keys:
        pks[receiver_name, label].add(pk)
    return [(*names, sorted(of_model)) for names, of_model in sorted(pks.items())]


def _not_started(table: str, column: Callable[[str], str]) -> tuple[str, list[str]]:
    """The SQL condition for a call not started (queued, sent or waiting, or
    failed with a retry to come), and its parameters."""
    from django_q_signals.models import OutboxCall

    state = f"{table}.{column('state')}"
    unstarted = [choice.value for choice in OutboxCall.UNSTARTED]
    condition = (
        f"({state} IN ({marks(unstarted)}) "
        f"OR ({state} = %s AND {table}.{column('due')} IS NOT NULL))"
    )
    return condition, [*unstarted, OutboxCall.State.FAILED.value]


def _of_rows(table: str, column: Callable[[str], str], pks: list[str]) -> str:
    """The SQL condition for a receiver's calls for a model's rows ``pks``:
    its parameters are the receiver's name, the model's label and the pks."""
    return (
        f"{column('receiver')} = %s AND {column('model')} = %s "
        f"AND {column('object_pk')} IN ({marks(pks)})"
    )


def _lock_rows(cursor: Any, connection: Any, keys: list[Key]) -> None:
    """Lock the receivers' calls for the rows of ``keys``, as they are now,
    in the order of their pks, before anything is written (not on SQLite,
    whose one writer makes the others wait).

    Two commits settling calls of the same row each write rows the other's
    statements read or write (the UPDATE that takes a place, the DELETEs),
    in orders of their own: each could come to hold a row the other waits
    for (a deadlock). Locked first, by pk as a worker deleting its calls
    locks them, the second waits for the first. The new calls' own rows
    among them: the relay, which passes over locked rows, cannot send one
    meanwhile."""
    table, column = table_names(connection)
    id_ = column("id")
    for receiver_name, label, pks in _by_model(keys):
        for chunk in chunks(pks):
            rows = f"FROM {table} WHERE {_of_rows(table, column, chunk)}"
            params = [receiver_name, label, *chunk]
            if connection.vendor == "postgresql":
                # Locked as they come out of the sort.
                cursor.execute(f"SELECT {id_} {rows} ORDER BY {id_} FOR UPDATE", params)
                continue
            # MySQL and MariaDB lock rows as they read them, here through
            # the (receiver, model, object_pk, id) index: their pks first.
            cursor.execute(f"SELECT {id_} {rows}", params)
            ids = sorted(row_id for (row_id,) in cursor.fetchall())
            for of_ids in chunks(ids):
                cursor.execute(
                    f"SELECT {id_} FROM {table} WHERE {id_} IN ({marks(of_ids)}) "
                    f"ORDER BY {id_} FOR UPDATE",
                    of_ids,
                )


def _find(alias: str, keys: list[Key]) -> dict[Key, list[_Found]]:
    """The calls not started for the receivers and rows of ``keys``: at most
    PKS_AT_MOST rows a query. (In SQL: it runs after every commit of a
    ``supersede`` receiver's call, where building a QuerySet would cost
    more than the query.)"""
    connection = connections[alias]
    table, column = table_names(connection)
    not_started, states = _not_started(table, column)
    found: dict[Key, list[_Found]] = defaultdict(list)
    with connection.cursor() as cursor:
        for receiver_name, label, pks in _by_model(keys):
            for chunk in chunks(pks):
                cursor.execute(
                    f"SELECT {column('object_pk')}, {column('id')}, "
                    f"{column('state')}, {column('payload_of')} FROM {table} "
                    f"WHERE {_of_rows(table, column, chunk)} AND {not_started}",
                    [receiver_name, label, *chunk, *states],
                )
                for object_pk, call_id, call_state, payload_of in cursor.fetchall():
                    found[alias, receiver_name, label, object_pk].append(
                        _Found(call_id, call_state, payload_of)
                    )
    return found


def _take_places(
    cursor: Any, connection: Any, take_place: list[tuple[Call, int]]
) -> set[int]:
    """Give each older row the payload of its call, where that row is still
    waiting, or on the broker since less than OUTBOX_RELAY_AFTER (its task
    may be lost), was never claimed (a claim that expired may yet end and
    delete it) and holds an older call, and the call's own row is still
    queued: one ``executemany``, then, unless each changed its row, a SELECT
    of what the rows hold. The pks of the calls now replaced: those that
    took a row's place, and those a newer call's took first."""
    if not take_place:
        return set()
    from django_q_signals.models import OutboxCall

    State = OutboxCall.State
    table, column = table_names(connection)
    new = connection.ops.quote_name("new")
    id_, state, payload_of = column("id"), column("state"), column("payload_of")
    # A call sent longer ago may have lost its task: the relay will tell.
    relay_after = timedelta(seconds=_conf.get().outbox_relay_after)
    recently = connection.ops.adapt_datetimefield_value(timezone.now() - relay_after)
    cursor.executemany(
        f"UPDATE {table} SET {column('payload')} = (SELECT {new}.{column('payload')} "
        f"FROM {table} {new} WHERE {new}.{id_} = %s), {payload_of} = %s "
        f"WHERE {id_} = %s AND {column('claim')} = '' "
        f"AND ({state} = %s OR ({state} = %s AND {column('sent')} >= %s)) "
        f"AND COALESCE({payload_of}, {id_}) < %s "
        f"AND EXISTS (SELECT 1 FROM {table} {new} "
        f"WHERE {new}.{id_} = %s AND {new}.{state} = %s)",
        [
            (
                own,
                own,
                older_id,
                State.WAITING.value,
                State.SENT.value,
                recently,
                own,
                own,
                State.QUEUED.value,
            )
            for own, older_id in ((call.outbox_id, older) for call, older in take_place)
        ],
    )
    if cursor.rowcount == len(take_place):
        # Each UPDATE changed its row: every call took its place.
        return {call.outbox_id for call, _ in take_place if call.outbox_id}
    holds: dict[int, int] = {}
    for chunk in chunks([older_id for _, older_id in take_place]):
        cursor.execute(
            f"SELECT {id_}, {payload_of} FROM {table} "
            f"WHERE {id_} IN ({marks(chunk)}) AND {payload_of} IS NOT NULL",
            chunk,
        )
        holds.update(cursor.fetchall())
    # A row holding a call newer than the one meant for it: that newer call
    # took its place first, and replaces this one too.
    return {
        call.outbox_id
        for call, older_id in take_place
        if call.outbox_id is not None and holds.get(older_id, 0) >= call.outbox_id
    }


def delete_superseded(alias: str, calls: Iterable[Call]) -> None:
    """For the calls of ``supersede`` receivers among ``calls`` (on
    ``alias``): delete their receiver's calls for their row written before
    them that have not started and hold no newer call. A call that started
    meanwhile is left to finish; the newest call runs after it, or beside it.

    On PostgreSQL, one DELETE a receiver, joined to the rows as arrays;
    elsewhere one DELETE a row, each by the row's whole index key, all sent
    at once (``executemany``: SQLite runs them in the process)."""
    rows: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for call in calls:
        call_key = key(call)
        if call_key is not None and call_key[0] == alias:
            assert call.outbox_id is not None
            rows[call_key[1]].append((call_key[2], call_key[3], call.outbox_id))
    if not rows:
        return
    connection = connections[alias]
    table, column = table_names(connection)
    id_ = column("id")
    not_started, states = _not_started(table, column)
    older = f"COALESCE({table}.{column('payload_of')}, {table}.{id_})"
    with connection.cursor() as cursor:
        for receiver_name, of_receiver in rows.items():
            if connection.vendor == "postgresql":
                labels, pks, newest = map(list, zip(*of_receiver, strict=True))
                cursor.execute(
                    f"DELETE FROM {table} USING unnest(%s::text[], %s::text[], "
                    "%s::bigint[]) AS v(label, pk, newest) "
                    f"WHERE {table}.{column('receiver')} = %s "
                    f"AND {table}.{column('model')} = v.label "
                    f"AND {table}.{column('object_pk')} = v.pk "
                    f"AND {table}.{id_} < v.newest AND {older} < v.newest "
                    f"AND {not_started}",
                    [labels, pks, newest, receiver_name, *states],
                )
                continue
            cursor.executemany(
                f"DELETE FROM {table} WHERE {column('receiver')} = %s "
                f"AND {column('model')} = %s AND {column('object_pk')} = %s "
                f"AND {id_} < %s AND {older} < %s AND {not_started}",
                [
                    (receiver_name, label, pk, newest, newest, *states)
                    for label, pk, newest in of_receiver
                ],
            )
