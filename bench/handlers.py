"""The same handler work, one UPDATE per signal, wired each way."""

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from bench.models import (
    BatchItem,
    CoalesceItem,
    DefaultItem,
    InlineItem,
    ManualItem,
    OutboxBatchItem,
    OutboxItem,
    PreviousItem,
)
from django_q_signals import async_receiver


@receiver(post_save, sender=InlineItem)
def process_inline(instance: InlineItem, **kwargs: Any) -> None:
    # The work itself, in the request, once the transaction has committed.
    pk = instance.pk
    transaction.on_commit(
        lambda: InlineItem.objects.filter(pk=pk).update(processed=True)
    )


@receiver(post_save, sender=ManualItem)
def queue_by_hand(instance: ManualItem, created: bool, **kwargs: Any) -> None:
    from django_q.tasks import async_task

    # Queued once the transaction has committed, as Django's docs advise:
    # a task queued inside it could run before the row exists.
    transaction.on_commit(
        partial(async_task, "bench.handlers.process_by_hand", instance.pk, created)
    )


def process_by_hand(pk: int, created: bool) -> None:
    item = ManualItem.objects.get(pk=pk)
    ManualItem.objects.filter(pk=item.pk).update(processed=True)


@async_receiver(post_save, sender=DefaultItem)
def process(instance: DefaultItem, **kwargs: Any) -> None:
    DefaultItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=BatchItem, batch=True)
def process_in_batches(instance: BatchItem, **kwargs: Any) -> None:
    BatchItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=CoalesceItem, batch=True, coalesce=True)
def process_coalesced(instance: CoalesceItem, **kwargs: Any) -> None:
    CoalesceItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=OutboxItem, outbox=True)
def process_from_the_outbox(instance: OutboxItem, **kwargs: Any) -> None:
    OutboxItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=OutboxBatchItem, outbox=True, batch=True)
def process_batches_from_the_outbox(instance: OutboxBatchItem, **kwargs: Any) -> None:
    OutboxBatchItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=PreviousItem, previous=["n"])
def process_with_previous(instance: PreviousItem, **kwargs: Any) -> None:
    PreviousItem.objects.filter(pk=instance.pk).update(processed=True)
