"""What ``--stats`` shows of the outbox: each receiver's calls by state and
the oldest's age, its failed calls' ids, and the calls that hold others
back."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

from django.db.models import Count, Min
from django.utils.timesince import timesince

from django_q_signals import _relay
from django_q_signals.models import OutboxCall

#: The most failed calls, or calls holding others back, ``--stats`` names
#: per receiver.
_FAILED_NAMED = 10


def counts() -> dict[str, str]:
    """Per receiver name: its calls in the outbox by state, and the oldest's
    age."""
    by_state: dict[str, Counter[str]] = {}
    oldest: dict[str, datetime] = {}
    for alias in _relay.aliases():
        rows = OutboxCall.objects.using(alias).values("receiver", "state")
        for row in rows.annotate(count=Count("pk"), oldest=Min("created")):
            name = row["receiver"]
            by_state.setdefault(name, Counter())[row["state"]] += row["count"]
            oldest[name] = min(oldest.get(name, row["oldest"]), row["oldest"])
    return {
        name: f"{_by_state(counted)}; the oldest written {_age(oldest[name])} ago"
        for name, counted in by_state.items()
    }


def _by_state(counted: Counter[str]) -> str:
    return ", ".join(
        f"{counted[state]} {state}"
        for state in OutboxCall.State.values
        if counted[state]
    )


def _age(written: datetime) -> str:
    # timesince() joins its numbers and units with no-break spaces.
    return timesince(written).replace("\N{NO-BREAK SPACE}", " ")


def failed_calls() -> dict[str, str]:
    """Per receiver name: the ids of its failed outbox calls, as ``retry``
    and ``discard`` take them (``ALIAS:ID``), the first few by id."""
    named: dict[str, list[str]] = defaultdict(list)
    more: Counter[str] = Counter()
    for alias in _relay.aliases():
        rows = OutboxCall.objects.using(alias).failed()
        for name, pk in rows.order_by("pk").values_list("receiver", "pk").iterator():
            if len(named[name]) < _FAILED_NAMED:
                named[name].append(f"{alias}:{pk}")
            else:
                more[name] += 1
    return {
        name: ", ".join(ids) + (f" and {more[name]} more" if more[name] else "")
        for name, ids in named.items()
    }


def holding_back() -> dict[str, str]:
    """Per receiver name (``ordered`` ones): the calls its waiting calls wait
    for, the earliest of their row, as ``ALIAS:ID (state)`` with how many
    wait behind each."""
    named: dict[str, list[str]] = defaultdict(list)
    more: Counter[str] = Counter()
    for alias in _relay.aliases():
        calls = OutboxCall.objects.using(alias)
        waiting = calls.filter(state=OutboxCall.State.WAITING)
        rows = waiting.values("receiver", "model", "object_pk").annotate(n=Count("pk"))
        for row in rows.order_by("receiver", "model", "object_pk"):
            name, count = row["receiver"], row["n"]
            if len(named[name]) >= _FAILED_NAMED:
                more[name] += 1
                continue
            of_row = calls.filter(
                receiver=name, model=row["model"], object_pk=row["object_pk"]
            )
            first = of_row.order_by("pk").values_list("pk", "state").first()
            if first is None or first[1] == OutboxCall.State.WAITING:
                continue  # Nothing holds it back: sent at once, or by the relay.
            pk, state = first
            behind = f"{count} call{'s' if count > 1 else ''}"
            named[name].append(f"{alias}:{pk} ({state}) holds back {behind}")
    return {
        name: "; ".join(held) + (f"; and {more[name]} more rows" if more[name] else "")
        for name, held in named.items()
        if held
    }
