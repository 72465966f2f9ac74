"""Per-row order (``ordered=True``): when a row's call is done, or discarded,
the row's next waiting call is sent at once.

A call held back by an earlier call of its row is marked ``waiting`` by the
worker that could not claim it (``_claim.Claim``). The worker that then
finishes the earlier call sends it; should that worker die first, the relay
sends any waiting call that nothing holds back any more.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from django_q_signals import _relay
from django_q_signals._outbox import chunks

if TYPE_CHECKING:
    from django_q_signals.models import OutboxCallQuerySet

#: Per database alias, rows as (model label, pk).
RowsByAlias = dict[str, set[tuple[str, str]]]


def send_next(receiver_name: str, rows: RowsByAlias) -> int:
    """Send the receiver's first waiting call of each of ``rows``, if any:
    how many were sent."""
    from django_q_signals.models import OutboxCall

    sent = 0
    for alias, wanted in rows.items():
        pks = sorted({pk for _, pk in wanted})
        for chunk in chunks(pks):
            # Mostly none: a plain query. The first waiting call of a row is
            # sent even if a failed call is still in front of it: its worker
            # finds that and leaves it waiting again.
            waiting = (
                OutboxCall.objects.using(alias)
                .filter(
                    receiver=receiver_name,
                    state=OutboxCall.State.WAITING,
                    object_pk__in=chunk,
                )
                .order_by("pk")
                .values_list("pk", "model", "object_pk")
            )
            first: dict[tuple[str, str], int] = {}
            for pk, model_label, object_pk in waiting:
                row = (model_label, object_pk)
                if row in wanted and row not in first:
                    first[row] = pk
            if first:
                calls = OutboxCall.objects.using(alias).filter(pk__in=first.values())
                sent += _relay.send_again(calls)
    return sent


def discard(calls: OutboxCallQuerySet) -> int:
    """Delete ``calls``, then send the calls that waited for them: how many
    were deleted."""
    alias = calls.db
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    rows = calls.exclude(model="").values_list("receiver", "model", "object_pk")
    for receiver_name, model_label, object_pk in rows.order_by().distinct():
        held[receiver_name].add((model_label, object_pk))
    deleted, _ = calls.delete()
    for receiver_name, waited_on in held.items():
        send_next(receiver_name, {alias: waited_on})
    return deleted
