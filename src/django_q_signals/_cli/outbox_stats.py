"""What ``--stats`` and the admin's dashboard show of the outbox: each
receiver's calls by state, the oldest's age, and its last hour (``numbers``);
for ``--stats`` also its failed calls' ids, and the calls that hold others
back."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Min
from django.utils import timezone
from django.utils.timesince import timesince

from django_q_signals import _history, _relay
from django_q_signals.models import OutboxCall

#: The most failed calls, or calls holding others back, ``--stats`` names
#: per receiver.
_FAILED_NAMED = 10


@dataclass
class ReceiverNumbers:
    """One receiver's outbox: its calls by state now, when the oldest was
    written, and its runs of the last hour (None: no record of any)."""

    name: str
    calls: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    recent: _history.Recent | None = None

    @property
    def by_state(self) -> list[tuple[str, int]]:
        """``(state, count)`` for every state, in the states' order."""
        return [(state, self.calls[state]) for state in OutboxCall.State.values]

    def described(self) -> str:
        """The calls, for people: ``"12 sent, 2 failed; the oldest written 3
        minutes ago"``, or ``"empty"``."""
        if self.oldest is None:
            return "empty"
        counted = ", ".join(f"{n} {state}" for state, n in self.by_state if n)
        return f"{counted}; the oldest written {age(self.oldest)} ago"

    def described_recent(self) -> str:
        """The last hour, for people: ``"40 runs, 1 failed; commit to start:
        median 35 ms, 95th percentile 1.2 s"``."""
        recent = self.recent
        if recent is None:
            return "no runs"
        said = f"{recent.runs} run{'' if recent.runs == 1 else 's'}, "
        said += f"{recent.failures} failed"
        if recent.median is not None and recent.p95 is not None:
            said += (
                f"; commit to start: median {_history.duration(recent.median)}, "
                f"95th percentile {_history.duration(recent.p95)}"
            )
        return said


def numbers(names: Iterable[str] = ()) -> dict[str, ReceiverNumbers]:
    """Per receiver name, those in ``names`` and those with calls in the
    outbox or runs in the last hour, on every database with the outbox: its
    calls, the oldest's age and its last hour. Sorted by name."""
    found = {name: ReceiverNumbers(name) for name in names}
    for alias in _relay.aliases():
        rows = OutboxCall.objects.using(alias).values("receiver", "state")
        for row in rows.annotate(count=Count("pk"), oldest=Min("created")):
            name = row["receiver"]
            numbers = found.setdefault(name, ReceiverNumbers(name))
            numbers.calls[row["state"]] += row["count"]
            if numbers.oldest is None or row["oldest"] < numbers.oldest:
                numbers.oldest = row["oldest"]
    for name, recent in _history.last_hour().items():
        found.setdefault(name, ReceiverNumbers(name)).recent = recent
    return dict(sorted(found.items()))


def age(written: datetime) -> str:
    """The time since ``written``, as ``span()`` says it, with plain spaces
    (timesince() joins its numbers and units with no-break spaces)."""
    return span(written, timezone.now()).replace("\N{NO-BREAK SPACE}", " ")


def span(earlier: datetime, later: datetime) -> str:
    """The time from ``earlier`` to ``later``: in seconds under a minute
    (timesince() would say "0 minutes")."""
    seconds = int((later - earlier) / timedelta(seconds=1))
    if seconds < 60:
        seconds = max(seconds, 0)
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    return timesince(earlier, later)


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
