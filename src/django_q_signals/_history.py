"""What outbox receivers did in the last hour: their runs, their failures,
and how long their calls waited from the commit to a worker.

The outbox rows cannot tell: they are deleted when their handler returns.
So each task run of an outbox receiver leaves one ``RunRecord`` row per
database (``record()``, in the worker), and ``last_hour()`` adds up those of
the last hour for the dashboard and ``manage.py qsignals --stats``.

Waits are kept as a histogram of log-scale buckets, ``BUCKETS_PER_DOUBLING``
to each doubling of milliseconds, so a run of many calls writes a few
numbers, not one per call; percentiles read from the merged buckets are
right to a bucket's width (about 9%).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

if TYPE_CHECKING:
    from django_q_signals.models import RunRecord

logger = logging.getLogger("django_q_signals")

#: What the summary covers.
WINDOW = timedelta(hours=1)
#: Records are deleted once this old: the window, and a margin.
KEPT_FOR = WINDOW + timedelta(minutes=10)
#: Seconds between two deletions of old records by one process, at least.
PRUNE_EVERY = 60.0
#: Buckets to each doubling of milliseconds: each is 2 ** (1/8), about 9%, wide.
BUCKETS_PER_DOUBLING = 8


def bucket(wait: float) -> int:
    """The histogram bucket of a wait of ``wait`` seconds. Bucket ``b``
    holds waits from ``2 ** (b / 8)`` to ``2 ** ((b + 1) / 8)``
    milliseconds; waits under a millisecond (or below 0, from clocks that
    disagree) go in bucket 0."""
    milliseconds = wait * 1000
    if not milliseconds > 1:  # NaN too
        return 0
    # Capped at about 35 years: an infinite wait has no logarithm.
    return math.floor(math.log2(min(milliseconds, 2.0**50)) * BUCKETS_PER_DOUBLING)


def bucket_value(number: int) -> float:
    """The wait, in seconds, that stands for bucket ``number``: its middle on
    the log scale, within half a bucket (about 4.5%) of every wait in it."""
    return float(2 ** ((number + 0.5) / BUCKETS_PER_DOUBLING) / 1000)


def histogram(waits: Iterable[float]) -> dict[str, int]:
    """The waits counted by bucket, as the record's JSON keeps them."""
    return {str(number): count for number, count in Counter(map(bucket, waits)).items()}


def percentile(buckets: Counter[int], fraction: float) -> float | None:
    """The wait ``fraction`` (0.5: the median) of the counted waits are at
    most, in seconds (the nearest rank's bucket); None for no waits."""
    numbers = sorted(buckets)
    # How many waits are in each bucket or a faster one.
    cumulative = list(itertools.accumulate(buckets[number] for number in numbers))
    if not cumulative or not cumulative[-1]:
        return None
    rank = max(1, math.ceil(fraction * cumulative[-1]))
    return bucket_value(numbers[bisect.bisect_left(cumulative, rank)])


#: When this process last deleted old records, per database alias.
_pruned_at: dict[str, float] = {}
#: The databases this process could not write a record to, and said so.
_failed_on: set[str] = set()


def record(
    alias: str, receiver_name: str, *, runs: int, failures: int, waits: list[float]
) -> None:
    """Record a task run of an outbox receiver on the database ``alias``:
    how many calls ran (``runs``), how many of them failed, and, for each
    call that started its first attempt, the seconds from its commit to its
    start. One INSERT; about once a minute a process also deletes the
    records older than ``KEPT_FOR``. A database error is logged as a
    WARNING, never raised: the run it records has happened."""
    from django_q_signals.models import RunRecord

    row = RunRecord(
        receiver=receiver_name,
        ended=timezone.now(),
        runs=runs,
        failures=failures,
        waits=histogram(waits),
    )
    try:
        with _own_savepoint(alias):
            _insert(alias, row)
        _prune(alias)
    except DatabaseError:
        # Once a process and database: a table missing (migration 0006 not
        # applied) would otherwise say so at every task.
        if alias not in _failed_on:
            _failed_on.add(alias)
            logger.warning(
                "Could not record a run of %s on the database %r, for the "
                "outbox dashboard (is migration django_q_signals 0006 applied "
                "there?); this process does not say so again",
                receiver_name,
                alias,
                exc_info=True,
            )


def _insert(alias: str, row: RunRecord) -> None:
    """One INSERT statement: no transaction of its own around it (as
    bulk_create() would open), and no model signals for the library's own
    rows."""
    connection = connections[alias]
    fields = [field for field in row._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(row._meta.db_table)} "
        f"({', '.join(quote(str(field.column)) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    params = [
        field.get_db_prep_save(getattr(row, field.attname), connection)
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _own_savepoint(alias: str) -> AbstractContextManager[Any]:
    """Inside a transaction (a test, a task run in the caller's transaction),
    a savepoint, so that a failed write leaves the transaction usable; in
    autocommit, as the worker runs, nothing: one statement is its own
    transaction."""
    if connections[alias].in_atomic_block:
        return transaction.atomic(using=alias)
    return nullcontext()


def _prune(alias: str) -> None:
    """Delete the records of ``alias`` too old to count, unless this process
    did in the last ``PRUNE_EVERY`` seconds."""
    from django_q_signals.models import RunRecord

    now = time.monotonic()
    last = _pruned_at.get(alias)
    if last is not None and now - last < PRUNE_EVERY:
        return
    _pruned_at[alias] = now
    connection = connections[alias]
    quote = connection.ops.quote_name
    table = quote(RunRecord._meta.db_table)
    ended = quote(str(RunRecord._meta.get_field("ended").column))
    cutoff = connection.ops.adapt_datetimefield_value(timezone.now() - KEPT_FOR)
    # A plain DELETE: the records have no relations, and no signals.
    with _own_savepoint(alias), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {ended} < %s", [cutoff])


class Recent(NamedTuple):
    """A receiver's last hour: its calls that ran and failed, and the time
    from commit to start of those that started a first attempt (median and
    95th percentile, in seconds; None where none did)."""

    runs: int
    failures: int
    started: int
    median: float | None
    p95: float | None


def last_hour(now: datetime | None = None) -> dict[str, Recent]:
    """Per receiver name: its records of the hour before ``now`` (default:
    now), on every database with the outbox, added up."""
    from django_q_signals import _relay
    from django_q_signals.models import RunRecord

    since = (now or timezone.now()) - WINDOW
    runs: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    waits: dict[str, Counter[int]] = {}
    for alias in _relay.aliases():
        rows = RunRecord.objects.using(alias).filter(ended__gte=since)
        if now is not None:
            rows = rows.filter(ended__lte=now)
        fields = ("receiver", "runs", "failures", "waits")
        try:
            with _own_savepoint(alias):
                for name, ran, failed, counted in rows.values_list(*fields).iterator():
                    runs[name] += ran
                    failures[name] += failed
                    merged = waits.setdefault(name, Counter())
                    for number, count in counted.items():
                        merged[int(number)] += count
        except DatabaseError:
            logger.warning(
                "Could not read the run records of the database %r",
                alias,
                exc_info=True,
            )
    return {
        name: Recent(
            runs=runs[name],
            failures=failures[name],
            started=sum(waits[name].values()),
            median=percentile(waits[name], 0.5),
            p95=percentile(waits[name], 0.95),
        )
        for name in waits
    }


def duration(seconds: float) -> str:
    """A wait for people: ``"40 ms"``, ``"1.2 s"``, ``"3.5 min"``, ``"2.0 h"``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
