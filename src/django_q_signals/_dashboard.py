"""The outbox's dashboard in the admin: per receiver, its calls by state and
its last hour, and whether Django Q2 runs the tasks. The numbers are those
of ``manage.py qsignals --stats``, read by the same functions."""

from __future__ import annotations

from typing import Any, NamedTuple

from django_q_signals import _history
from django_q_signals._cli import cluster, outbox_stats
from django_q_signals._registry import all_receivers
from django_q_signals.models import OutboxCall


class Line(NamedTuple):
    """A receiver's line of the dashboard, ready to show."""

    name: str
    counts: list[tuple[str, int]]
    oldest: str
    runs: int
    failures: int
    median: str
    p95: str


def context() -> dict[str, Any]:
    """What the dashboard's template shows."""
    receivers = sorted(
        (receiver for receiver in all_receivers() if receiver.is_connected()),
        key=lambda receiver: receiver.name,
    )
    with_outbox = [receiver.name for receiver in receivers if receiver.uses_outbox]
    numbers = outbox_stats.numbers(with_outbox)
    seen = cluster.overview(receivers)
    return {
        "states": [label for _, label in OutboxCall.State.choices],
        "lines": [_line(each) for each in numbers.values()],
        "queues": seen.queues,
        "clusters": seen.clusters,
        "clusters_not_known": seen.not_known,
        "warning": seen.warning,
    }


def _line(numbers: outbox_stats.ReceiverNumbers) -> Line:
    recent = numbers.recent
    return Line(
        name=numbers.name,
        counts=numbers.by_state,
        oldest="-" if numbers.oldest is None else outbox_stats.age(numbers.oldest),
        runs=recent.runs if recent else 0,
        failures=recent.failures if recent else 0,
        median=_shown(recent.median if recent else None),
        p95=_shown(recent.p95 if recent else None),
    )


def _shown(seconds: float | None) -> str:
    return "-" if seconds is None else _history.duration(seconds)
