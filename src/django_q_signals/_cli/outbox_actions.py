"""``qsignals relay``, ``retry`` and ``discard``: the outbox calls each acts
on, and what it does to them; each returns the line the command prints."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable

from django.core.management.base import CommandError

from django_q_signals import _order, _relay
from django_q_signals._registry import all_receivers
from django_q_signals.models import OutboxCall, OutboxCallQuerySet

#: A call's id as given: the database's alias (None: not given), and its pk.
CallId = tuple[str | None, int]

STATES = tuple(OutboxCall.State.values)


def call_id(text: str) -> CallId:
    """A call's id as given: ``ALIAS:ID``, or ``ID`` alone."""
    alias, _, number = text.rpartition(":")
    try:
        return alias or None, int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an outbox call's id: give ID or ALIAS:ID, for "
            "example 41 or default:41."
        ) from None


def relay(*, everything: bool) -> str:
    sent = _relay.run(everything=everything)
    return f"Sent {sent} outbox call(s) to the broker."


def retry(ids: list[CallId], *, handler: str | None, database: str | None) -> str:
    selected = _selected([OutboxCall.State.FAILED.value], ids, handler, database)
    sent = sum(_relay.send_again(rows) for rows in selected)
    return f"Sent {sent} failed outbox call(s) again."


def discard(
    ids: list[CallId],
    *,
    state: str,
    handler: str | None,
    database: str | None,
    confirm: Callable[[str], bool] | None = None,
) -> str:
    """``state`` is one of STATES, or ``"any"``. Without ids or a handler,
    every call in that state goes: then ``confirm``, if given, is asked
    first (a question such as "Discard 3 failed outbox calls?")."""
    states = list(STATES) if state == "any" else [state]
    selected = _selected(states, ids, handler, database)
    if confirm is not None and not ids and not handler:
        count = sum(rows.count() for rows in selected)
        noun = "outbox call" if state == "any" else f"{state} outbox call"
        question = f"Discard {count} {noun}{'s' if count != 1 else ''}?"
        if count and not confirm(question):
            return "Discard cancelled: nothing was done."
    discarded = sum(_order.discard(rows) for rows in selected)
    return f"Discarded {discarded} outbox call(s)."


def _selected(
    states: list[str], ids: list[CallId], handler: str | None, database: str | None
) -> list[OutboxCallQuerySet]:
    """The calls an action acts on, per database. Each database numbers its
    calls from 1, so an id names a call on one database only; an id or a
    handler that names no call is a CommandError, and nothing is done."""
    aliases = _databases(database)
    noun = "outbox call" if len(states) > 1 else f"{states[0]} outbox call"
    if handler:
        noun += f" of the handler {handler!r}"
    if ids:
        wanted = _ids_by_database(ids, aliases, database)
        return _by_id(wanted, states, handler, noun)
    selected = [_calls(alias, states, handler) for alias in aliases]
    if handler and not any(rows.exists() for rows in selected):
        raise CommandError(
            f"No {noun}, on any database: nothing was done.{_why_none(handler)}"
        )
    return selected


def _why_none(handler: str) -> str:
    """Why a handler may have no calls: no receiver of this process has that
    name, or none of those that have it uses the outbox."""
    receivers = [
        receiver
        for receiver in all_receivers()
        if receiver.name == handler or receiver.name.startswith(f"{handler}#")
    ]
    if not receivers:
        return (
            f" No receiver is named {handler!r}: give a handler's dotted path "
            "or a receiver's name, as manage.py qsignals lists them."
        )
    if not any(receiver.uses_outbox for receiver in receivers):
        return (
            " It does not use the outbox (outbox=True): its calls go to the "
            "broker only, and are never kept."
        )
    return ""


def _databases(database: str | None) -> list[str]:
    """The aliases acted on: those with the outbox table, or the one
    ``--database`` names."""
    aliases = _relay.aliases()
    if database is None:
        return aliases
    if database not in aliases:
        raise CommandError(
            f"The database {database!r} has no outbox table "
            f"({_having_the_table(aliases)})."
        )
    return [database]


def _ids_by_database(
    ids: list[CallId], aliases: list[str], database: str | None
) -> dict[str, set[int]]:
    wanted: dict[str, set[int]] = defaultdict(set)
    for alias, pk in ids:
        wanted[_database_of(alias, pk, aliases, database)].add(pk)
    return wanted


def _database_of(
    alias: str | None, pk: int, aliases: list[str], database: str | None
) -> str:
    """The alias of the call an id names."""
    if alias is None:
        if len(aliases) != 1:
            raise CommandError(
                f"Which database's call {pk}? Each database numbers its "
                f"calls from 1 ({_having_the_table(aliases)}): give "
                f"--database ALIAS, or write the id as ALIAS:{pk}."
            )
        return aliases[0]
    if database is not None and alias != database:
        raise CommandError(f"{alias}:{pk} is on {alias!r}, not {database!r}.")
    if alias not in aliases:
        raise CommandError(
            f"{alias}:{pk}: the database {alias!r} has no outbox table "
            f"({_having_the_table(aliases)})."
        )
    return alias


def _by_id(
    wanted: dict[str, set[int]],
    states: list[str],
    handler: str | None,
    noun: str,
) -> list[OutboxCallQuerySet]:
    """The calls the ids name; a CommandError naming those that name none."""
    selected: list[OutboxCallQuerySet] = []
    missing: list[str] = []
    for alias, pks in wanted.items():
        rows = _calls(alias, states, handler).filter(pk__in=pks)
        found = set(rows.values_list("pk", flat=True))
        missing += [f"{alias}:{pk}" for pk in sorted(pks - found)]
        selected.append(rows)
    if missing:
        raise CommandError(
            f"No {noun} has the {'id' if len(missing) == 1 else 'ids'} "
            f"{', '.join(missing)}: nothing was done."
        )
    return selected


def _calls(alias: str, states: list[str], handler: str | None) -> OutboxCallQuerySet:
    """The calls on ``alias`` in one of ``states``, of ``handler`` if given."""
    calls = OutboxCall.objects.using(alias).filter(state__in=states)
    return calls.of_handler(handler) if handler else calls


def _having_the_table(aliases: list[str]) -> str:
    listed = ", ".join(map(repr, aliases)) or "none"
    return f"databases with the outbox table: {listed}"
