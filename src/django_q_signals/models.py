"""The outbox: calls of ``outbox=True`` receivers, kept until their handler has run."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from django_q_signals._payload import PK_TEXT_AT_MOST


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

    class Meta:
        verbose_name = "outbox call"
        indexes = (
            models.Index(fields=["model", "object_pk"], name="qsignals_outbox_row"),
            models.Index(fields=["state", "due"], name="qsignals_outbox_due"),
            models.Index(fields=["receiver", "state"], name="qsignals_outbox_receiver"),
        )

    def __str__(self) -> str:
        row = f" {self.model} pk={self.object_pk}" if self.model else ""
        return f"{self.receiver}({row.strip()}) {self.state}"
