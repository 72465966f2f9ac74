"""Handlers the reliability suite's qcluster processes run.

Module level, so a worker finds them by importing this module. Each call
writes one Delivery row, keyed by what the signal said, so that the test can
count missing and duplicate calls.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.db import connection
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import Signal

from django_q_signals import async_receiver
from tests.models import (
    BatchedChore,
    BatchedErrand,
    Blocked,
    Chore,
    Crate,
    Delivery,
    Errand,
    Latest,
    Parcel,
    Run,
    Sheet,
    Versioned,
)


def signal_key(signal: Signal, instance: Model | None, **kwargs: Any) -> str:
    """The ledger key of one load-test signal: unique per signal sent."""
    pk = instance.pk if instance is not None else kwargs["_instance_pk"]
    if signal is post_save:
        fields = ",".join(sorted(kwargs["update_fields"] or ()))
        return f"create:{pk}" if kwargs["created"] else f"update:{pk}:{fields}"
    if signal is m2m_changed:
        return f"{kwargs['action']}:{pk}:{sorted(kwargs['pk_set'])}"
    return f"{'pre' if signal is pre_delete else 'post'}_delete:{pk}"


def deliver(receiver: str, key: str) -> None:
    backend = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [backend] = cursor.fetchone()
    Delivery.objects.create(
        receiver=receiver,
        key=key,
        cluster=os.environ.get("QSIGNALS_CLUSTER", ""),
        backend=backend,
    )


# The load test: the same work for unbatched (Parcel) and batched (Crate).

ITEM_SIGNALS = [post_save, pre_delete, post_delete]


@async_receiver(ITEM_SIGNALS, sender=Parcel)
def parcel_changed(signal: Signal, instance: Parcel | None, **kwargs: Any) -> None:
    deliver("unbatched", signal_key(signal, instance, **kwargs))


@async_receiver(m2m_changed, sender=Parcel.tags.through)
def parcel_tagged(signal: Signal, instance: Parcel | None, **kwargs: Any) -> None:
    deliver("unbatched", signal_key(signal, instance, **kwargs))


@async_receiver(ITEM_SIGNALS, sender=Crate, batch=True)
def crate_changed(signal: Signal, instance: Crate | None, **kwargs: Any) -> None:
    deliver("batched", signal_key(signal, instance, **kwargs))


@async_receiver(m2m_changed, sender=Crate.tags.through, batch=True)
def crate_tagged(signal: Signal, instance: Crate | None, **kwargs: Any) -> None:
    deliver("batched", signal_key(signal, instance, **kwargs))


# The fault tests. A title says what the handler does: "fail..." raises,
# "slow..." takes a while, anything else is simply recorded.


def do_chore(receiver: str, instance: Chore | BatchedChore | None) -> None:
    assert instance is not None
    if instance.title.startswith("fail"):
        raise ValueError(f"refused {instance.title}")
    if instance.title.startswith("slow"):
        time.sleep(0.05)
    deliver(receiver, instance.title)


@async_receiver(post_save, sender=Chore)
def chore_done(instance: Chore | None, **kwargs: Any) -> None:
    do_chore("chore_done", instance)


@async_receiver(post_save, sender=BatchedChore, batch=True)
def batched_chore_done(instance: BatchedChore | None, **kwargs: Any) -> None:
    do_chore("batched_chore_done", instance)


# The outbox tests: the load test's work and the chores', through the outbox.

ERRAND_SIGNALS = [post_save, pre_delete, post_delete]


@async_receiver(ERRAND_SIGNALS, sender=Errand, outbox=True)
def errand_changed(signal: Signal, instance: Errand | None, **kwargs: Any) -> None:
    do_errand("errand", signal, instance, **kwargs)


@async_receiver(m2m_changed, sender=Errand.tags.through, outbox=True)
def errand_tagged(signal: Signal, instance: Errand | None, **kwargs: Any) -> None:
    deliver("errand", signal_key(signal, instance, **kwargs))


@async_receiver(ERRAND_SIGNALS, sender=BatchedErrand, outbox=True, batch=True)
def batched_errand_changed(
    signal: Signal, instance: BatchedErrand | None, **kwargs: Any
) -> None:
    do_errand("batched_errand", signal, instance, **kwargs)


@async_receiver(m2m_changed, sender=BatchedErrand.tags.through, outbox=True, batch=True)
def batched_errand_tagged(
    signal: Signal, instance: BatchedErrand | None, **kwargs: Any
) -> None:
    deliver("batched_errand", signal_key(signal, instance, **kwargs))


def do_errand(
    receiver: str,
    signal: Signal,
    instance: Errand | BatchedErrand | None,
    **kwargs: Any,
) -> None:
    if instance is not None and instance.title.startswith("slow"):
        time.sleep(0.05)
    deliver(receiver, signal_key(signal, instance, **kwargs))


#: Runs this many times before it succeeds; the ledger counts the attempts.
FLAKY_FAILURES = 2


flaky_job = Signal()


@async_receiver(flaky_job, outbox=True, retries=3, retry_backoff=1)
def flaky(job: str, **kwargs: Any) -> None:
    deliver("flaky_attempt", job)
    attempts = Delivery.objects.filter(receiver="flaky_attempt", key=job).count()
    if attempts <= FLAKY_FAILURES:
        raise RuntimeError(f"attempt {attempts} of {job} fails")
    deliver("flaky_done", job)


def not_a_receiver(**kwargs: Any) -> None:
    """What a forged task would like to run: it must never be called."""
    deliver("not_a_receiver", repr(kwargs))


# The time limit: a job named "hang..." outlives its task's timeout.

overrun_job = Signal()
#: The task timeout of the time limit test's receivers, in seconds.
OVERRUN_TIMEOUT = 2


def do_overrun(receiver: str, job: str) -> None:
    deliver(f"{receiver}_attempt", job)
    if job.startswith("hang"):
        time.sleep(OVERRUN_TIMEOUT * 5)
    deliver(receiver, job)


_limited = {"timeout": OVERRUN_TIMEOUT}


@async_receiver(overrun_job, q_options=_limited)
def overrun(job: str, **kwargs: Any) -> None:
    do_overrun("overrun", job)


@async_receiver(overrun_job, batch=True, q_options=_limited)
def batched_overrun(job: str, **kwargs: Any) -> None:
    do_overrun("batched_overrun", job)


@async_receiver(overrun_job, outbox=True, retries=1, q_options=_limited)
def outbox_overrun(job: str, **kwargs: Any) -> None:
    do_overrun("outbox_overrun", job)


@async_receiver(overrun_job, outbox=True, retries=1, batch=True, q_options=_limited)
def batched_outbox_overrun(job: str, **kwargs: Any) -> None:
    do_overrun("batched_outbox_overrun", job)


# The per-row order tests: each commit bumps a row's version, and each run
# records the version it read, the version its call's commit wrote, and when
# it started and ended.

#: Seconds a run of the load's handlers takes.
LOAD_RUN = 0.01
#: Seconds a run of the supersede handlers takes.
LATEST_RUN = 0.05
#: The version whose call always fails (Blocked).
POISON = 2


def record_run(
    receiver: str,
    instance: Versioned | None,
    previous: dict[str, Any],
    seconds: float,
) -> Run:
    assert instance is not None
    before = previous["version"]  # None: the row was created
    start = time.time()
    run = Run.objects.create(
        receiver=receiver,
        row=instance.pk,
        read=instance.version,
        written=0 if before is None else before + 1,
        cluster=os.environ.get("QSIGNALS_CLUSTER", ""),
        start=start,
    )
    time.sleep(seconds)
    run.end = time.time()
    Run.objects.filter(pk=run.pk).update(end=run.end)
    return run


@async_receiver(
    post_save, sender=Sheet, outbox=True, ordered=True, previous=["version"]
)
def sheet_in_order(
    instance: Sheet | None, previous: dict[str, Any], **kwargs: Any
) -> None:
    record_run("ordered", instance, previous, LOAD_RUN)


@async_receiver(post_save, sender=Sheet, outbox=True, previous=["version"])
def sheet_in_any_order(
    instance: Sheet | None, previous: dict[str, Any], **kwargs: Any
) -> None:
    record_run("unordered", instance, previous, LOAD_RUN)


@async_receiver(
    post_save, sender=Latest, outbox=True, supersede=True, previous=["version"]
)
def latest_only(
    instance: Latest | None, previous: dict[str, Any], **kwargs: Any
) -> None:
    record_run("supersede", instance, previous, LATEST_RUN)


@async_receiver(
    post_save,
    sender=Latest,
    outbox=True,
    supersede=True,
    ordered=True,
    previous=["version"],
)
def latest_only_in_order(
    instance: Latest | None, previous: dict[str, Any], **kwargs: Any
) -> None:
    record_run("supersede_ordered", instance, previous, LATEST_RUN)


@async_receiver(
    post_save,
    sender=Blocked,
    outbox=True,
    ordered=True,
    retries=1,
    previous=["version"],
)
def blocked_saved(
    instance: Blocked | None, previous: dict[str, Any], **kwargs: Any
) -> None:
    run = record_run("blocked", instance, previous, LOAD_RUN)
    if run.written == POISON:
        raise ValueError(f"version {POISON} is refused, however often it is tried")
