"""The outbox: calls of ``outbox=True`` receivers, kept until their handler has run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from django_q_signals._payload import PK_TEXT_AT_MOST


class OutboxCallQuerySet(models.QuerySet["OutboxCall"]):
    """The outbox's questions and state changes, each written once."""

    def live_claims(self, now: datetime) -> OutboxCallQuerySet:
        """Calls a worker is running, its claim not yet expired."""
        return self.filter(state=OutboxCall.State.RUNNING, due__gt=now)

    def without_live_claims(self, now: datetime) -> OutboxCallQuerySet:
        """All but the calls a worker is running under a live claim."""
        return self.exclude(state=OutboxCall.State.RUNNING, due__gt=now)

    def due(self, now: datetime, written_before: datetime) -> OutboxCallQuerySet:
        """Calls the relay sends again without asking a broker: still queued
        since ``written_before``, their claim expired, a retry due, or
        waiting with no earlier call left for their row."""
        State = OutboxCall.State
        return self.filter(
            Q(state=State.QUEUED, created__lte=written_before)
            | Q(state__in=OutboxCall.CLAIMABLE_WHEN_DUE, due__lte=now)
            | _no_longer_held_back()
        )

    def no_longer_held_back(self) -> OutboxCallQuerySet:
        """Waiting calls with no earlier call of their row left."""
        return self.filter(_no_longer_held_back())

    def held_back(self) -> OutboxCallQuerySet:
        """Calls an earlier call of their receiver for their row keeps from
        running, where the receiver is ``ordered``."""
        return self.filter(Exists(_earlier_calls()))

    def unstarted(self, sent_before: datetime) -> OutboxCallQuerySet:
        """Calls on the broker since ``sent_before`` that no worker started."""
        return self.filter(state=OutboxCall.State.SENT, sent__lte=sent_before)

    def failed(self) -> OutboxCallQuerySet:
        """Calls whose handler raised, with a retry to come or not."""
        return self.filter(state=OutboxCall.State.FAILED)

    def of_handler(self, handler: Callable[..., Any] | str) -> OutboxCallQuerySet:
        """The calls of one handler: the decorated function, or its dotted
        path, which are every receiver of that function (its name alone, or
        with a ``#dispatch_uid``), or one receiver's name."""
        from django_q_signals._registry import all_receivers

        if isinstance(handler, str):
            return self.filter(
                Q(receiver=handler) | Q(receiver__startswith=f"{handler}#")
            )
        names = [r.name for r in all_receivers() if r.func == handler]
        return self.filter(receiver__in=names)

    def mark_sent(self, now: datetime) -> int:
        """On the broker after their commit. A state only moves forward: only
        calls still ``queued``, so what a worker already recorded is kept."""
        return self.filter(state=OutboxCall.State.QUEUED).update(
            state=OutboxCall.State.SENT, sent=now, due=None
        )

    def mark_resent(self, now: datetime) -> int:
        """On the broker again, sent by the relay or an operator (who hold
        the rows locked): all but those running under a live claim."""
        return self.without_live_claims(now).update(
            state=OutboxCall.State.SENT, sent=now, due=None
        )

    def release(self, claim: str) -> int:
        """Give back calls ``claim`` took and did not start: ``queued``
        again, as if never claimed."""
        return self.filter(claim=claim).update(
            state=OutboxCall.State.QUEUED,
            claim="",
            due=None,
            attempts=F("attempts") - 1,
        )

    def mark_failed(self, claim: str, error: str, next_attempt: datetime | None) -> int:
        """The handler raised under ``claim``: the error, and when the call
        runs again (None: never, out of retries)."""
        return self.filter(claim=claim).update(
            state=OutboxCall.State.FAILED, error=error, due=next_attempt
        )


class OutboxCall(models.Model):
    """One call of an ``outbox=True`` receiver, written in the transaction
    that fired its signal and deleted when its handler returns."""

    class State(models.TextChoices):
        #: Written; not on the broker yet.
        QUEUED = "queued"
        #: On the broker, waiting for a worker.
        SENT = "sent"
        #: A worker claimed it and is running its handler.
        RUNNING = "running"
        #: Its handler raised; ``due`` is the next attempt, if any is left.
        FAILED = "failed"
        #: ``ordered``: held back until the row's earlier calls are done.
        WAITING = "waiting"

    #: A worker may claim a call in these states at once; in the states of
    #: CLAIMABLE_WHEN_DUE once ``due`` has passed (an expired claim, a retry).
    CLAIMABLE = (State.QUEUED, State.SENT, State.WAITING)
    CLAIMABLE_WHEN_DUE = (State.RUNNING, State.FAILED)
    #: Not started: what a newer call of a ``supersede`` receiver replaces
    #: (with the failed calls that have a retry due).
    UNSTARTED = (State.QUEUED, State.SENT, State.WAITING)

    id = models.BigAutoField(primary_key=True)
    receiver = models.CharField(
        "handler", max_length=255, help_text="The receiver's name: its dotted path."
    )
    state = models.CharField(max_length=10, choices=State, default=State.QUEUED)
    model = models.CharField(
        max_length=100, blank=True, help_text="The label of the call's instance."
    )
    object_pk = models.CharField(
        "pk",
        max_length=PK_TEXT_AT_MOST,
        blank=True,
        # Longer ones: their start and a digest (canonical_pk).
        help_text="The pk of the call's instance.",
    )
    payload = models.BinaryField(help_text="The call, as it is queued.")
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="The last error, if any.")
    created = models.DateTimeField(default=timezone.now)
    sent = models.DateTimeField(
        null=True, blank=True, help_text="When it was last put on the broker."
    )
    due = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Running: when its claim expires. Failed: when it is sent "
        "again, if it has retries left.",
    )
    claim = models.CharField(max_length=32, blank=True)
    progress_done = models.FloatField(
        null=True, blank=True, help_text="How far its handler is, as it said."
    )
    progress_total = models.FloatField(
        null=True, blank=True, help_text="Out of how much, if it said."
    )
    progress_note = models.CharField(max_length=200, blank=True)
    payload_of = models.BigIntegerField(
        "holds call",
        null=True,
        blank=True,
        editable=False,
        help_text="supersede: the later call whose place it took, and whose "
        "payload it holds.",
    )

    objects = OutboxCallQuerySet.as_manager()

    class Meta:
        verbose_name = "outbox call"
        indexes = (
            models.Index(fields=["model", "object_pk"], name="qsignals_outbox_row"),
            models.Index(fields=["state", "due"], name="qsignals_outbox_due"),
            models.Index(fields=["receiver", "state"], name="qsignals_outbox_receiver"),
            # A row's calls of one receiver in order: ordered and supersede.
            models.Index(
                fields=["receiver", "model", "object_pk", "id"],
                name="qsignals_outbox_order",
            ),
        )

    def __str__(self) -> str:
        row = f" {self.model} pk={self.object_pk}" if self.model else ""
        return f"{self.receiver}({row.strip()}) {self.state}"

    @property
    def progress(self) -> str:
        """How far its handler is, for people: ``"40%"`` (of a total) or
        ``"12"``, with the note if any; empty if it has not said."""
        done, total = self.progress_done, self.progress_total
        if done is None:
            return self.progress_note
        shown = f"{done / total:.0%}" if total else f"{done:g}"
        return f"{shown} {self.progress_note}".strip()

    @property
    def row(self) -> tuple[str, str] | None:
        """The label and pk of the call's instance, if it has one."""
        return (self.model, self.object_pk) if self.model else None

    def earlier_calls(self) -> OutboxCallQuerySet:
        """Its receiver's calls for its row written before it, oldest first:
        with ``ordered``, each of them runs before it does."""
        if self.row is None:
            return OutboxCall.objects.none()
        return (
            OutboxCall.objects.using(self._state.db)
            .filter(
                receiver=self.receiver,
                model=self.model,
                object_pk=self.object_pk,
                pk__lt=self.pk,
            )
            .order_by("pk")
        )

    @property
    def blocked_by(self) -> OutboxCall | None:
        """For a waiting call, the earliest call of its row still to run."""
        if self.state != OutboxCall.State.WAITING:
            return None
        return self.earlier_calls().first()


def _no_longer_held_back() -> Q:
    return Q(~Exists(_earlier_calls()), state=OutboxCall.State.WAITING)


def _earlier_calls() -> OutboxCallQuerySet:
    """For a subquery: the calls of the outer call's receiver and row written
    before it."""
    return OutboxCall.objects.filter(
        receiver=OuterRef("receiver"),
        model=OuterRef("model"),
        object_pk=OuterRef("object_pk"),
        pk__lt=OuterRef("pk"),
    ).exclude(model="")


class RunRecord(models.Model):
    """One task run of an outbox receiver on one database, kept for an hour
    or so: what the dashboard and ``manage.py qsignals --stats`` count."""

    id = models.BigAutoField(primary_key=True)
    receiver = models.CharField(
        "handler", max_length=255, help_text="The receiver's name: its dotted path."
    )
    ended = models.DateTimeField(db_index=True)
    runs = models.PositiveIntegerField(help_text="Calls whose handler ran.")
    failures = models.PositiveIntegerField(help_text="Of those, calls that failed.")
    waits = models.JSONField(
        default=dict,
        help_text="Seconds from commit to start of the calls that started a "
        "first attempt, counted by log-scale bucket (see _history.bucket).",
    )

    class Meta:
        verbose_name = "run record"

    def __str__(self) -> str:
        return f"{self.receiver}: {self.runs} ran, {self.failures} failed"
